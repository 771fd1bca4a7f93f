"""The data dir and the secrets kept on disk: the directory is the service
user's alone (0700, its files 0600), and the admin key lives there as a file
(``admin.key``) that ``serve`` creates at first start and the CLI reads on the
same machine. Nothing here prints or logs a secret's value."""
from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from runtime.settings import Settings

log = logging.getLogger("llmfn")
ADMIN_KEY_PREFIX = "sk-llmfn-admin-"


def secure(data_dir: Path) -> Path:
    """Create the data dir private, or make an existing one private: the dir 0700 (which closes
    everything under it) and its entries without group or other bits (0644 -> 0600)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for entry in data_dir.iterdir():
        _owner_only(entry)
    return data_dir


def _owner_only(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return  # a SQLite journal that came and went
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISLNK(st.st_mode) and mode & 0o077:
        os.chmod(path, mode & 0o700)


def read_secret_file(path: Path, what: str) -> str:
    """A secret from a file (surrounding whitespace dropped); an error names the file, never its content."""
    try:
        value = Path(path).read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path} cannot be read ({type(exc).__name__})") from None
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    if (mode := stat.S_IMODE(Path(path).stat().st_mode)) & 0o077:
        log.warning("%s file %s can be read by other users (mode %o): chmod 600 it", what, path, mode)
    return value


def create_admin_key(path: Path) -> str:
    """Write a new admin key to ``path`` (0600, never overwriting one) and return it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def admin_key(settings: Settings, *, create: bool = False) -> str | None:
    """The admin key: from the settings (env), the named file, or the data dir's
    ``admin.key``, which is created when ``create`` (``serve``) and none exists."""
    if settings.admin_key is not None and settings.admin_key.get_secret_value():
        return settings.admin_key.get_secret_value()
    path = settings.admin_key_path
    if settings.admin_key_file is not None or path.exists():
        return read_secret_file(path, "admin key")
    if not create:
        return None
    try:
        return create_admin_key(path)
    except FileExistsError:  # another serve on this data dir was first
        return read_secret_file(path, "admin key")


def static_keys(settings: Settings) -> frozenset[str]:
    """The static API keys: ``LLMFN_API_KEYS`` and the keys file's, one per line or comma-separated."""
    text = settings.api_keys.get_secret_value()
    if settings.api_keys_file is not None:
        text += "," + read_secret_file(settings.api_keys_file, "API keys").replace("\n", ",")
    return frozenset(k.strip() for k in text.split(",") if k.strip())
