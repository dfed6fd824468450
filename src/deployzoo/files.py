"""Writing artifacts safely: atomic files and directories with the user's normal permissions, refusal to replace
anything that is not deployzoo's own artifact, clean-up of what killed runs left behind, an exclusive lock per
output directory, and one-line errors for outputs that cannot be written (read-only, full, not permitted)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from deployzoo.errors import DeployzooError

_TMP_TAG = ".deployzoo-tmp-"  # .NAME.deployzoo-tmp-PID-XXXX: what a writer of NAME works in
_OLD_TAG = ".deployzoo-old-"  # .NAME.deployzoo-old-PID-XXXX: the NAME it is replacing, for a moment
_umask_lock = threading.Lock()


def default_cache_dir() -> Path:
    """Where deployzoo keeps what it can make again (engines, exported graphs, downloaded weights):
    `$DEPLOYZOO_CACHE`, else `~/.cache/deployzoo`."""
    return Path(os.environ.get("DEPLOYZOO_CACHE", Path.home() / ".cache" / "deployzoo")).expanduser()


def umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
    return old


def normal_mode(path: Path, is_dir: bool | None = None) -> None:
    """Give a file / directory made by mkstemp / mkdtemp (0600 / 0700) the mode an ordinary open() / mkdir()
    would have given it (0666 / 0777 minus the umask)."""
    d = path.is_dir() if is_dir is None else is_dir
    os.chmod(path, (0o777 if d else 0o666) & ~umask())


def describe_os_error(exc: OSError, path: str | Path, exact: bool = False) -> str:
    """'PATH: cannot write (cause)' for a failed write, the cause being the system's words ('No space left on
    device', 'Read-only file system', ...). PATH is the file the error names, or `path` (always `path` when
    `exact`: the user's output rather than the temporary file it is written through)."""
    cause = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or str(exc) or type(exc).__name__
    where = path if exact or not exc.filename else exc.filename
    return f"{where}: cannot write ({cause})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_prefix(final: Path, tag: str = _TMP_TAG) -> str:
    return f".{final.name}{tag}{os.getpid()}-"


def clean_stale_temps(final: str | Path) -> list[Path]:
    """Remove what killed writers left in the directory `final` is written in (`.NAME.deployzoo-tmp-PID-*` /
    `.NAME.deployzoo-old-PID-*` of processes that no longer run, whatever NAME they were writing); a live writer's
    temporaries are left alone. Returns what was removed."""
    parent = Path(final).parent
    if not parent.is_dir():
        return []
    pat = re.compile(rf"^\..+?(?:{re.escape(_TMP_TAG)}|{re.escape(_OLD_TAG)})(\d+)-")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pat.match(p.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def check_not_cwd(path: str | Path, option: str = "-o") -> None:
    """Refuse an output that is the working directory, one of its parents, the home directory or '/': a command
    that writes (or replaces) its output there would mix it with, or remove, unrelated files."""
    p = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if p == cwd or p in cwd.parents or p == home or p == Path(p.anchor):
        raise DeployzooError(f"{option} {path}: names the current directory or one of its parents ({p}); give a new "
                             "directory for the output, e.g. -o out/")


def check_output_dir(path: str | Path, is_ours: Callable[[Path], bool], what: str, option: str = "-o") -> None:
    """`path` may be written (replaced) as a `what` directory: it is absent, empty, or `is_ours(path)`; a plain
    file, a symlink or a directory of other content is refused with one line."""
    p = Path(path)
    check_not_cwd(p, option)
    if p.is_symlink():
        raise DeployzooError(f"{p}: is a symbolic link; refusing to replace it with a {what} (give a new path)")
    if not p.exists():
        return
    if not p.is_dir():
        raise DeployzooError(f"{p}: exists and is a file, not a {what}; refusing to replace it (give a new path)")
    try:
        empty = next(p.iterdir(), None) is None
    except OSError as exc:
        raise DeployzooError(f"{p}: cannot list the directory ({exc.strerror or exc})") from None
    if not empty and not is_ours(p):
        raise DeployzooError(f"{p}: exists and is not a {what} (it holds other files); refusing to replace it "
                             "(give a new or empty directory)")


def check_output_file(path: str | Path, is_ours: Callable[[Path], bool], what: str, option: str = "-o") -> None:
    """`path` may be written (replaced) as a `what` file: absent, or `is_ours(path)`."""
    p = Path(path)
    check_not_cwd(p, option)
    if p.is_dir():
        raise DeployzooError(f"{p}: is a directory; {option} names the file to write ({what})")
    if p.exists() and not is_ours(p):
        raise DeployzooError(f"{p}: exists and is not {what}; refusing to overwrite it (remove it or give "
                             "another path)")


def _mkdir_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DeployzooError(f"{path.parent}: exists and is not a directory") from None
    except OSError as exc:
        raise DeployzooError(describe_os_error(exc, path.parent)) from None


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final` in one rename. Callers check
    first that `final` may be replaced (check_output_dir). Temporaries of killed runs are removed first."""
    final = Path(final)
    _mkdir_parent(final)
    clean_stale_temps(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    except OSError as exc:
        raise DeployzooError(describe_os_error(exc, final, exact=True)) from None
    try:
        normal_mode(tmp, True)
        yield tmp
        try:
            if final.exists():
                old = final.with_name(f"{_temp_prefix(final, _OLD_TAG)}{os.urandom(3).hex()}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except OSError as exc:
            raise DeployzooError(describe_os_error(exc, final, exact=True)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_file(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Call writer(tmp_path) then rename onto `path`; the file gets the umask's normal mode. A write that fails for
    want of space or permission is one line naming the path."""
    path = Path(path)
    _mkdir_parent(path)
    clean_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise DeployzooError(describe_os_error(exc, path, exact=True)) from None
    os.close(fd)
    try:
        writer(Path(tmp))
        normal_mode(Path(tmp), False)
        os.replace(tmp, path)
    except OSError as exc:
        raise DeployzooError(describe_os_error(exc, path, exact=True)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class DirLock:
    """An exclusive lock on a directory (flock on DIR/.deployzoo.lock, released when the process ends, even if
    it is killed): a second writer into the same directory is refused with one line while the first runs."""

    NAME = ".deployzoo.lock"

    def __init__(self, directory: str | Path, what: str) -> None:
        self.path = Path(directory) / self.NAME
        self.what = what
        self._f: IO[str] | None = None

    def __enter__(self) -> "DirLock":
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise DeployzooError(describe_os_error(exc, self.path)) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DeployzooError(f"{self.path.parent}: another {self.what} is writing here ({holder}); wait for it to "
                                 "finish or give another output directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            finally:
                self._f.close()
                self._f = None
