"""Opening LanceDB leaves out the REST namespace client's API classes until something asks for them."""

import subprocess
import sys

CODE = """
import sys
from ragtune.store.lancedb import import_lancedb

db = import_lancedb().connect(sys.argv[1])
db.create_table("t", data=[{"x": 1}, {"x": 2}])
assert db.open_table("t").count_rows() == 2
print(sorted(m for m in sys.modules if m.startswith("lance_namespace_urllib3_client.api")))
from lance_namespace_urllib3_client import TableApi
import lance_namespace_urllib3_client as client
print(TableApi.__name__, client.MetadataApi.__name__, client.__version__)
"""


def test_lancedb_works_without_building_the_rest_clients_api_classes_and_they_come_when_asked(tmp_path):
    done = subprocess.run([sys.executable, "-c", CODE, str(tmp_path / "db")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "[]"  # a table written and read with none of them imported
    name, other, version = after.split()
    assert (name, other) == ("TableApi", "MetadataApi") and version[0].isdigit()
