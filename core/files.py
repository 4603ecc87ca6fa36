"""Files atomplug writes (models, plots, reports): written atomically, with errors that name the fix."""

import errno
import os
import secrets
from typing import IO, Callable, Optional


class OutputError(OSError):
    """A file atomplug writes could not be written; the message names the file and the fix."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.errno = code


_FIXES = {
    errno.ENOSPC: "free disk space or write elsewhere",
    errno.EFBIG: "free disk space, raise the file size limit (ulimit -f) or write elsewhere",
    errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EACCES: "choose a directory you may write to",
    errno.EPERM: "choose a directory you may write to",
    errno.EROFS: "choose a writable file system",
}


def write_atomically(path: str, write: Callable[[IO], object], *, tag: str, what: str, binary: bool = True) -> None:
    """Write `path` through `write(handle)` into a temporary file in the same directory, renamed
    over `path` only once complete: a failure (disk full, quota, a killed process) leaves `path`
    as it was, never half-written, and removes the temporary file. Raises OutputError."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(
            f"cannot write {what} to {path!r}: the directory {directory!r} does not exist: create it first",
            errno.ENOENT,
        )
    temporary: Optional[str] = None
    try:
        for _attempt in range(100):
            candidate = os.path.join(directory, f".atomplug-{tag}-{secrets.token_hex(6)}.tmp")
            try:
                # mode 0o666 minus the umask: the permissions any new file gets (mkstemp's 0o600 would not)
                descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            temporary = candidate
            break
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name")
        with os.fdopen(descriptor, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        reason = error.strerror or str(error)
        fix = _FIXES.get(error.errno, "write elsewhere")
        raise OutputError(
            f"could not write {what} to {path!r} ({reason}): {fix}; {path!r} was left as it was", error.errno
        ) from error
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
