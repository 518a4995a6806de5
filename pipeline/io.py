"""Atomic file output: a stage either writes its whole output or leaves nothing behind."""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import stat
import tempfile
from collections.abc import Hashable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError, SystemFault, stops_held

# mkstemp/mkdtemp create 0600/0700 whatever the umask; outputs get what open() would give them
# (a team's shared storage needs group-readable models). Read once, at import (single-threaded).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
NAME_MAX = 255  # bytes in one file name: ext4, XFS, btrfs, tmpfs
# errno values a user fixes on the machine, not in the pipeline: no space, quota, too large,
# permissions, read-only file system, too many open files
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.EMFILE}  # fmt: skip


def system_fault(err: BaseException, path: str | Path | None = None) -> SystemFault | None:
    """A SystemFault naming the path for a disk/permission error, or None for other errors."""
    where = path or err.filename if isinstance(err, OSError) else path
    if where:  # a file inside an output's temp folder: named where it goes, not the temp
        where = re.sub(r"(^|/)\.([^/]+)\.\d+-[^/]+(?=/)", r"\1\2", str(where))
    if isinstance(err, OSError) and err.errno in _SYSTEM_ERRNOS:
        what = err.strerror
        if err.errno == errno.EMFILE:  # it named whichever file came last (a font)
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            what += f" (at most {limit} at once, `ulimit -n`; raise it)"
    # torch.save's: a short write ("file write failed", or its zip writer's "unexpected pos")
    elif isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("file write failed", "unexpected pos")
    ):
        what = "write failed (disk full?)"
    else:
        return None
    return SystemFault(f"{where}: {what}" if where else what)


def _temp_name(path: Path) -> dict:
    """mkstemp/mkdtemp's arguments for a temp beside `path`, `.<name>.<pid>-<random>`: those a
    killed writer left (kill -9 gives it no chance to remove them) are removed first. No dot
    after the name's own: torch.save names the archive's folder after the stem, and a model's
    bytes must not depend on its temp name."""
    name = _shortened(path.name, NAME_MAX - len(f"..{os.getpid()}-") - 8)  # mkstemp's 8
    for stale in path.parent.glob(f".{glob.escape(name)}.*-*"):
        pid, _, _ = stale.name[len(name) + 2 :].partition("-")
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return {"prefix": f".{name}.{os.getpid()}-", "dir": path.parent}


def _shortened(name: str, limit: int) -> str:
    """`name` cut to `limit` bytes: a temp beside a file of a 240-byte name (a legal one)
    would pass the file system's 255."""
    raw = os.fsencode(name)
    return name if len(raw) <= limit else os.fsdecode(raw[:limit])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


@contextmanager
def named_faults(path: Path, placing: bool = False) -> Iterator[None]:
    """Disk and permission errors name `path`. `placing`: around making its folder and temp name
    and putting the result in place, where any OS refusal is one about `path` (a file where its
    folder must be, a name too long)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        fault = system_fault(err, path)
        if fault is None and placing and isinstance(err, OSError):
            link = next((p for p in path.parents if p.is_symlink() and not p.exists()), None)
            why = _to_nothing(link) if link else f"{err.strerror}: {err.filename}"
            fault = SystemFault(f"{path}: cannot write there ({why})")
        if fault is None and isinstance(err, OSError) and err.errno == errno.EBADF:
            fault = SystemFault(f"{path}: names a descriptor that is not open for writing")
        if fault is None:
            raise
        raise fault from err


def _to_nothing(link: Path) -> str:
    return f"{link} links to {os.readlink(link)}, which does not exist"


def check_folders(path: Path) -> None:
    """Fail now, naming it, where a folder `path` needs is a link to nothing (a disk not
    mounted) or a file; nothing is made."""
    for folder in path.parents:
        if folder.is_dir():
            return
        if folder.is_symlink() and not folder.exists():
            raise SystemFault(f"{path}: cannot write there ({_to_nothing(folder)})")
        if os.path.lexists(folder):
            raise SystemFault(
                f"{path}: cannot write there (a file where its folder goes: {folder})"
            )


@contextmanager
def atomic_dir(path: str | Path, placed: list | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path`, on error it is removed.
    `placed`: see Outputs."""
    path = Path(path)
    with named_faults(path):
        with named_faults(path, placing=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(**_temp_name(path)))
        try:
            yield tmp
            tmp.chmod(0o777 & ~_UMASK)
            with named_faults(path, placing=True):
                _place(tmp, path, placed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _place(new: Path, path: Path, placed: list | None) -> None:
    """`new` renamed onto `path`. The earlier one is moved aside first and back where the rename
    fails (a folder was deleted first: a failed rename lost it); it is deleted after, or, with
    `placed`, listed there with `path` (Outputs deletes it once every output is in place)."""
    _same_kind(new, path)
    aside = _aside(path, new.is_dir()) if os.path.lexists(path) else None
    try:
        new.rename(path)
    except BaseException:
        if aside is not None:
            aside.rename(path)
        raise
    if placed is not None:
        placed.append((path, aside))
    elif aside is not None:
        _remove(aside)


def _same_kind(new: Path, path: Path) -> None:
    """An output is not put in place of the other kind (a file where its folder goes)."""
    if os.path.lexists(path) and (path.is_dir() and not path.is_symlink()) != new.is_dir():
        kind = "a file where its folder goes" if new.is_dir() else "a folder where its file goes"
        if path.is_symlink():  # the folder is replaced, not written through: link one above it
            kind = "a symlink where its folder goes; link the folder above it instead"
        raise OSError(errno.EEXIST, kind, str(path))


def _aside(path: Path, folder: bool) -> Path:
    """`path`, a `folder` or a file, renamed to a temp name beside it."""
    if folder:
        aside = Path(tempfile.mkdtemp(**_temp_name(path)))
    else:
        fd, name = tempfile.mkstemp(**_temp_name(path))
        os.close(fd)
        aside = Path(name)
    try:
        path.rename(aside)  # onto the empty placeholder
    except BaseException:  # an immutable `path`: the placeholder was left beside it
        _remove(aside)
        raise
    return aside


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(
    path: str | Path, stream: bool = False, placed: list | None = None
) -> Iterator[Path]:
    """Yield a temp file path beside `path`; renamed onto `path` only if the block succeeds.
    A character device or a named pipe is written in place: a stream keeps no earlier content,
    and the rename would put a file where the device was. A symlink is replaced, not written
    through: with DVC's symlink cache, its target is the cache's copy. `stream` (predict's
    output, a model card): where `path` is this process's stdout or stderr (`-o -`, or
    `-o /dev/stdout > f.csv`), the bytes go through its descriptor once all are written, so the
    shell's `>` or `>>` holds. `placed`: see Outputs."""
    path = Path(path)
    fd = _own_stream(path) if stream else None
    if fd is not None:
        copy = Path(f"{path} (its temp copy in {tempfile.gettempdir()})")  # a full $TMPDIR
        with named_faults(copy), tempfile.TemporaryDirectory(prefix="lstm-pipeline-") as tmp:
            yield Path(tmp, "out")
            with named_faults(path):
                with open(Path(tmp, "out"), "rb") as src, open(fd, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst)
        return
    if _special(path):
        with named_faults(path):
            yield path
        return
    if re.fullmatch(r"/proc/[^/]+/fd/\d+", os.path.realpath(path)):  # /dev/stdout, closed
        raise SystemFault(f"{path}: names a descriptor that is not open for writing")
    with named_faults(path):
        with named_faults(path, placing=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(**_temp_name(path))
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            tmp.chmod(0o666 & ~_UMASK)
            with named_faults(path, placing=True):
                if placed is None:
                    _same_kind(tmp, path)
                    os.replace(tmp, path)
                else:
                    _place(tmp, path, placed)
        finally:
            tmp.unlink(missing_ok=True)


def _own_stream(path: Path) -> int | None:
    """The descriptor, 1 or 2, where `path` is what this process's stdout or stderr is."""
    for fd in (1, 2):
        try:
            if os.path.samestat(path.stat(), os.fstat(fd)):
                return fd
        except OSError:
            continue
    return None


def is_stream(path: Path) -> bool:
    """Written as a stream by atomic_file(path, stream=True), not replaced: stdout or stderr,
    a character device, a named pipe."""
    return _own_stream(path) is not None or _special(path)


def _special(path: Path) -> bool:
    """A character device or a named pipe; a block device or a socket is refused."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise SystemFault(f"{path}: a block device or socket, not a file to write")
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


outputs_replaced = False  # by Outputs, in this process: a stop after it keeps the new ones


class Outputs(ExitStack):
    """A stage's several outputs, each written at a temp beside its place (`file(path)`,
    `folder(path)`: a context yielding the temp) and put in place together when the block ends
    without error: a failure or a kill leaves every earlier output as it was, including one
    while they are put in place (those already placed are put back). A write's disk fault names
    the output written, not the last one opened (an error in the block passes through every
    output's context)."""

    def __init__(self):
        super().__init__()
        self._placed: list[tuple[Path, Path | None]] = []  # (output, its earlier one, aside)

    def file(self, path: str | Path):
        return self._writing(atomic_file, path)

    def folder(self, path: str | Path):
        return self._writing(atomic_dir, path)

    @contextmanager
    def _writing(self, atomic, path) -> Iterator[Path]:
        tmp = self.enter_context(atomic(path, placed=self._placed))
        with named_faults(Path(path)):
            yield tmp

    def __exit__(self, *exc) -> bool:
        global outputs_replaced
        # a stop while they are placed or the earlier ones deleted waits: it left the earlier
        # ones beside the new ones, and the stage said "its earlier outputs are kept"
        with stops_held():
            try:
                suppressed = super().__exit__(*exc)
            except BaseException:
                for path, aside in reversed(self._placed):
                    with suppress(OSError):
                        _remove(_aside(path, path.is_dir() and not path.is_symlink()))
                        if aside is not None:
                            aside.rename(path)
                raise
            for _, aside in self._placed:
                if aside is not None:
                    _remove(aside)
            outputs_replaced = outputs_replaced or bool(self._placed)
        return suppressed


def check_writable(path: str | Path) -> None:
    """Fail now, naming `path`, where atomic_file(path, stream=True) could not start (for a
    command that changes something else first, e.g. a registry, and writes `path` after)."""
    path = Path(path)
    if is_stream(path):
        return
    with named_faults(path), named_faults(path, placing=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(**_temp_name(path))
        os.close(fd)
        os.unlink(name)


@contextmanager
def held_lock(path: Path, busy: str) -> Iterator[None]:
    """An exclusive lock on `path` (made) for the block; PipelineError(`busy`) where another
    process holds it. The OS frees it when the holder dies, however it dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(busy) from None
        yield


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(dumps_json(obj))


def append_text(path: str | Path, text: str) -> None:
    """Append to a file, created if missing (a disk or permission error names it)."""
    with named_faults(Path(path)), open(path, "a") as f:
        f.write(text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML keeps the last of a key given twice, where DVC refuses the file: refused here too."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key if isinstance(key, Hashable) else id(key))
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        """YAML 1.1 (PyYAML) reads `0300` as octal 192 and `1:30` as 90; DVC reads YAML 1.2,
        300 and a string: `max_epochs: 0300` trained 192 epochs while DVC saw no change."""
        text = self.construct_scalar(node)
        if re.fullmatch(r"[-+]?0[0-9_]+|.*:.*", text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is {super().construct_yaml_int(node)} in YAML 1.1 and not "
                "for DVC (YAML 1.2); write the number without a leading 0 or ':'",
                node.start_mark,
            )  # fmt: skip
        return super().construct_yaml_int(node)


_UniqueKeys.add_constructor("tag:yaml.org,2002:merge", lambda loader, node: "<<")
_UniqueKeys.add_constructor("tag:yaml.org,2002:int", _UniqueKeys.construct_yaml_int)


def yaml_error_line(err: yaml.YAMLError, path: str | Path) -> str:
    """'<path>: line 3, column 1: found character '\\t' that cannot start any token'."""
    mark = getattr(err, "problem_mark", None)
    where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{path}{where}: {getattr(err, 'problem', None) or 'not valid YAML'}"


def read_yaml(path: str | Path, error: type[PipelineError]) -> Any:
    """A YAML file's content; a syntax error, a key given twice or bytes that are not UTF-8 are
    one `error` naming the file, line and column."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)
    except yaml.YAMLError as err:
        raise error(yaml_error_line(err, path)) from None
    except UnicodeDecodeError as err:
        raise error(not_utf8_line(err, path)) from None
    except OSError as err:
        raise system_fault(err, path) or error(f"{path}: {err.strerror}") from None


def not_utf8_line(err: UnicodeDecodeError, path: str | Path) -> str:
    """'<path>: line 3: byte 0xe9 is not UTF-8', for a whole file's decoding error."""
    line = err.object[: err.start].count(b"\n") + 1
    return f"{path}: line {line}: byte {err.object[err.start]:#x} is not UTF-8"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (md5 is what dvc.lock records)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (Linux: a
    container's cpuset, `taskset`), every core elsewhere (macOS has no sched_getaffinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
