"""Object storage for the LanceDB store: ``[store] uri = "s3://bucket/prefix"``.

The index keeps the layout of a local one under the prefix: the Lance table ``chunks.lance/`` and
``meta.json`` (its identity). LanceDB reads and writes the table itself (``storage_options``); the
small file goes through pyarrow's S3 filesystem with the same settings. An S3 PUT is atomic, so
``meta.json`` is whole or absent, as the local atomic rename makes it. Credentials come from the
environment variables that ``[store] s3_key_env`` and ``s3_secret_env`` name, never from
ragtune.toml; both names empty leave them to the AWS default chain (instance or container role).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from ragtune.config import StoreConfig


@dataclass(frozen=True)
class S3Place:
    """Where an index lives in a bucket, and how to reach it."""

    uri: str
    endpoint: str = ""
    region: str = ""
    key: str | None = None
    secret: str | None = None
    hint: str = ""  # what to check when the server refuses or cannot be reached

    @classmethod
    def from_config(cls, config: StoreConfig) -> S3Place:
        """The place of ``[store] uri``, with the credentials read from the environment now."""
        names = [n for n in (config.s3_key_env, config.s3_secret_env) if n]
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise ConfigError(f"the index at {config.uri} needs S3 credentials: set ${' and $'.join(missing)} (named by [store] "
                              's3_key_env and s3_secret_env), or set both names to "" to use the AWS default chain')
        where = f"[store] s3_endpoint = {config.s3_endpoint!r}" if config.s3_endpoint else "the network"
        creds = f"the credentials in ${' and $'.join(names)}" if names else "the AWS credentials of this machine"
        return cls(config.uri.rstrip("/"), config.s3_endpoint, config.s3_region,
                   os.environ.get(config.s3_key_env) if config.s3_key_env else None,
                   os.environ.get(config.s3_secret_env) if config.s3_secret_env else None,
                   f"check {where}, that the bucket exists, and {creds}")

    @property
    def bucket(self) -> str:
        return self.uri.removeprefix("s3://").partition("/")[0]

    def storage_options(self) -> dict[str, str]:
        """LanceDB's (object_store's) settings for this place."""
        options = {"aws_endpoint": self.endpoint, "aws_region": self.region, "aws_access_key_id": self.key,
                   "aws_secret_access_key": self.secret, "allow_http": "true" if self.endpoint.startswith("http://") else ""}
        return {k: v for k, v in options.items() if v}

    @cached_property
    def filesystem(self):
        """pyarrow's S3 filesystem for the small files (made once: it holds a client)."""
        from pyarrow import fs

        scheme = "http" if self.endpoint.startswith("http://") else "https"
        return fs.S3FileSystem(access_key=self.key, secret_key=self.secret, region=self.region or None,
                               endpoint_override=self.endpoint or None, scheme=scheme, connect_timeout=5, request_timeout=30)

    def _key(self, name: str) -> str:
        return f"{self.uri.removeprefix('s3://')}/{name}"

    def read_text(self, name: str) -> str | None:
        """The object ``name`` under the prefix, or None when there is none."""
        try:
            with self.filesystem.open_input_stream(self._key(name)) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.error(e) from None

    def write_text(self, name: str, text: str) -> None:
        try:
            with self.filesystem.open_output_stream(self._key(name)) as f:
                f.write(text.encode())
        except OSError as e:
            raise self.error(e) from None

    def delete(self, name: str) -> None:
        try:
            self.filesystem.delete_file(self._key(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self.error(e) from None

    def require_bucket(self) -> None:
        """``ConfigError`` unless the bucket exists (ragtune never creates one)."""
        from pyarrow import fs

        try:
            found = self.filesystem.get_file_info(self.bucket).type != fs.FileType.NotFound
        except OSError as e:
            raise self.error(e) from None
        if not found:
            server = f"at {self.endpoint}" if self.endpoint else "on AWS"
            raise ConfigError(f"the bucket {self.bucket!r} of [store] uri = {self.uri!r} does not exist {server}: create it "
                              "(ragtune does not create buckets), or fix [store] uri or s3_endpoint")

    def error(self, e: OSError) -> ConfigError:
        return ConfigError(f"cannot use the index at {self.uri}: {' '.join(str(e).split()).rstrip('.')}; {self.hint}")
