"""A safe arithmetic evaluator: the expression is parsed with ``ast`` and only numbers, the four
operations, ``//``, ``%``, powers, brackets and a few named functions are evaluated — never ``eval``.

>>> calculate("(3 + 4) * 12 / 2")
'42'
>>> calculate("2^10 - 1,000")
'24'

Anything else (a name, an attribute, a call of something not listed, a string) is refused with
``CalculatorError`` saying what was found; sizes are bounded (expression length, exponent, result
digits) so no input can make it run for long or eat memory.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_CHARS = 300
MAX_EXPONENT = 1000
MAX_BITS = 4000  # integers past ~1200 digits are refused

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FUNCTIONS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil}


class CalculatorError(ValueError):
    """The expression is not arithmetic this calculator evaluates; the message says why."""


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return the number as text (integers without ``.0``)."""
    value = evaluate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return repr(round(value, 10)) if isinstance(value, float) else str(value)


def evaluate(expression: str) -> int | float:
    text = _normalise(expression)
    if not text:
        raise CalculatorError("empty expression; give arithmetic such as 12 * (3 + 4)")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression of {len(text)} characters; at most {MAX_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    return _eval(tree.body)


def _normalise(expression: str) -> str:
    """How people and models write arithmetic -> Python's: 1,000 -> 1000, ^ -> **, × -> *, ÷ -> /, $ and % signs off."""
    text = str(expression).strip().rstrip("=").strip()
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = text.replace("^", "**").replace("×", "*").replace("÷", "/").replace("$", "")
    return re.sub(r"(?<=\d)\s*%(?!\s*[\d(])", "/100", text)  # "15%" is 0.15; "7 % 3" stays modulo


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
        return _check_size(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords:
        try:
            return _check_size(FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
        except (TypeError, ValueError) as e:
            raise CalculatorError(f"{node.func.id}(): {e}") from None
    raise CalculatorError(f"{_describe(node)} is not arithmetic; use numbers, + - * / // % ^, brackets "
                          f"and {', '.join(FUNCTIONS)}")


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (at most {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and base.bit_length() * exponent > MAX_BITS:
        raise CalculatorError("the result is too large")


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise CalculatorError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"the attribute .{node.attr}"
    if isinstance(node, ast.Call):
        return "a call of " + (f"{node.func.id!r}" if isinstance(node.func, ast.Name) else "something not listed")
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    return f"a {type(node).__name__} expression"
