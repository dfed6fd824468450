"""Where a model's weights come from, and the one function that turns a `--weights` value into a local file.

Each model file declares its official sources per variant (`WeightsSource`: the published file, its direct URL
where one is published, the published sha256 or sha256 prefix, and where those were published); `official_sources`
is the whole table, `deployzoo models` prints it.

`resolve_weights(spec, variant, value)` takes what a user gave:

- None: None (random init);
- a local FILE: the path, unchanged (the checkpoint loaders report a missing or bad file);
- `official`: the model zoo's published URL for the variant, with its published hash; a variant whose weights
  are only on Google Drive / OneDrive / Baidu is refused in one line that says where to get them;
- an `http(s)://` URL: that file (`URL#sha256=HEX` or `--weights-sha256 HEX` give the expected hash; the official
  URL of the model carries its published hash).

Downloads land in `<cache>/weights/<file name>` (`default_cache_dir()`: `$DEPLOYZOO_CACHE` or
`~/.cache/deployzoo`) through `<file name>.part`: an interrupted download continues from where it stopped (HTTP
Range, with If-Range so a file changed on the server starts over; a server that ignores Range sends the whole
file and the part is rewritten), a dropped connection is resumed at once up to ATTEMPTS times, and the file is
renamed into place only once it is whole and its sha256 checked (the full hash, or the prefix a torch.hub /
OpenMMLab file name carries: `-bf2d0c1e.pth` = the first 8 hex digits of its sha256). A file that fails the
check is deleted. `<cache>/weights/.meta/` records each file's URL, size and sha256, so a cached file is reused
without the network when it matches the expected hash (or, with none published, the hash it was downloaded
with). Only the standard library speaks HTTP (urllib: the usual *_proxy variables apply).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from deployzoo import __version__
from deployzoo.checkpoint import file_sha256
from deployzoo.errors import DeployzooError
from deployzoo.files import default_cache_dir
from deployzoo.progress import progress_bar

log = logging.getLogger(__name__)

OFFICIAL = "official"  # the --weights keyword (a local file of that name is ./official)
TIMEOUT_S = 30.0  # connect / read timeout of one request
ATTEMPTS = 3  # requests per download: a dropped connection is resumed this many times less one
CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class WeightsSource:
    """One variant's official weights: the published `file` and `published` (where it, its URL and its hash were
    published); `url` when it can be downloaded directly, else `manual` (where to download it by hand); `sha256`
    (a full published hash) or `hash_prefix` (a published sha256 prefix, e.g. the one in the file name); `note`
    (what the publisher reports for it)."""

    file: str
    published: str
    url: str | None = None
    sha256: str | None = None
    hash_prefix: str | None = None
    manual: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if (self.url is None) == (self.manual is None):
            raise ValueError(f"{self.file}: give either a direct url or where to download it manually")
        for h in (self.sha256, self.hash_prefix):
            if h is not None and not _HEX.fullmatch(h):
                raise ValueError(f"{self.file}: {h!r} is not a lower-case sha256 (prefix)")
        if self.sha256 is not None and len(self.sha256) != 64:
            raise ValueError(f"{self.file}: sha256 {self.sha256!r} is not 64 hex digits (use hash_prefix)")

    @property
    def expected(self) -> str | None:
        """The published sha256, or its published prefix; None when none is published."""
        return self.sha256 or self.hash_prefix

    def hash_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.hash_prefix:
            where = " (in the file name)" if f"-{self.hash_prefix}." in self.file else ""
            return f"sha256 prefix {self.hash_prefix}{where}"
        return "none published"

    def download_text(self) -> str:
        return self.url or f"manual download: {self.manual}"

    def __str__(self) -> str:
        return f"{self.file} ({self.published}{'; ' + self.note if self.note else ''})"


@dataclass(frozen=True)
class Expected:
    """A hash a download must match: full sha256 or a prefix, and who said so (for the error message)."""

    hex: str
    origin: str

    def matches(self, sha256: str) -> bool:
        return sha256.startswith(self.hex)


# ---------------------------------------------------------------------------------------------------- the table
def official_sources() -> list[tuple[str, str, WeightsSource]]:
    """(model, variant, source) for every registered model's variants, in listing order."""
    from deployzoo.registry import get_model, model_names

    out = []
    for name in model_names():
        spec = get_model(name)
        out += [(name, v, spec.weights[v]) for v in spec.variants if v in spec.weights]
    return out


def official_source(spec_or_model: Any, variant: str | None) -> WeightsSource:
    spec = _spec(spec_or_model)
    variant = spec.check_variant(variant)
    src = spec.weights.get(variant)
    if not isinstance(src, WeightsSource):
        raise DeployzooError(f"{spec.name} {variant}: no official weights are known; pass --weights FILE or URL")
    return src


def _spec(spec_or_model: Any) -> Any:
    if isinstance(spec_or_model, str):
        from deployzoo.registry import get_model

        return get_model(spec_or_model)
    return spec_or_model


# ---------------------------------------------------------------------------------------------------- resolving
def check_sha256(text: str, what: str) -> str:
    """A user's expected hash, lower case: a full sha256 or a prefix of at least 8 hex digits."""
    h = text.strip().lower()
    if not _HEX.fullmatch(h):
        raise DeployzooError(f"{what} {text!r}: expected a sha256 (64 hex digits) or a prefix of at least 8")
    return h


def resolve_weights(spec_or_model: Any, variant: str | None, value: str | Path | None, *,
                    sha256: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The local checkpoint for a --weights value (module docstring): None, a FILE, `official` or an http(s) URL.
    `sha256` (--weights-sha256) is checked too: against a local FILE (never deleted) or a download (deleted when
    it differs). `spec_or_model` (a ModelSpec or a model name; None only for a plain FILE or URL) names the
    official sources; `cache_dir` replaces default_cache_dir()."""
    want = Expected(check_sha256(sha256, "--weights-sha256"), "--weights-sha256") if sha256 else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if want:
            raise DeployzooError("--weights-sha256 needs --weights (FILE, official or URL)")
        return None
    if isinstance(value, Path):
        return _local(value, want)
    text = value.strip()
    expects = [want] if want else []
    if text.lower() == OFFICIAL:
        if spec_or_model is None:
            raise DeployzooError("--weights official: which model's? (a model name is needed)")
        spec = _spec(spec_or_model)
        src = official_source(spec, variant)
        if src.url is None:
            raise DeployzooError(
                f"{spec.name} {spec.check_variant(variant)}: the official weights ({src.file}) have no direct "
                f"download URL: download them by hand from {src.manual} (published: {src.published}) and pass "
                "--weights FILE")
        if src.expected:
            expects.insert(0, Expected(src.expected, f"published {src.hash_text()}"))
        return download(src.url, expects, cache_dir)
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        url, _, frag = text.partition("#")
        if frag:
            m = re.fullmatch(r"sha256=(\w+)", frag)
            if m is None:
                raise DeployzooError(f"{text}: unsupported URL fragment #{frag} (#sha256=HEX gives the expected hash)")
            expects.append(Expected(check_sha256(m.group(1), f"{url}#sha256="), "the URL's #sha256"))
        src = _official_for_url(spec_or_model, url) if spec_or_model is not None else None
        if src is not None and src.expected:
            expects.insert(0, Expected(src.expected, f"published {src.hash_text()}"))
        return download(url, expects, cache_dir)
    if "://" in text:
        raise DeployzooError(f"{text}: unsupported URL scheme {scheme!r} (http and https download; else pass "
                             "--weights FILE)")
    return _local(Path(text), want)


def _local(path: Path, want: Expected | None) -> Path:
    if want is not None and path.is_file():
        got = file_sha256(path)
        if not want.matches(got):
            raise DeployzooError(f"{path}: sha256 {got} does not match --weights-sha256 {want.hex}")
    return path


def _official_for_url(spec_or_model: Any, url: str) -> WeightsSource | None:
    """The model's official source with this URL (any variant; http and https alike), if it is one."""
    spec = _spec(spec_or_model)
    key = url.split("://", 1)[-1]
    return next((s for s in spec.weights.values() if isinstance(s, WeightsSource) and s.url
                 and s.url.split("://", 1)[-1] == key), None)


# ---------------------------------------------------------------------------------------------------- downloading
def weights_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where downloads go: `<cache>/weights`, the cache being `cache_dir` or default_cache_dir()."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "weights"


def file_name_of(url: str) -> str:
    """The file name a URL's path ends in (percent-decoded): the name of the cached file."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise DeployzooError(f"{url}: the URL does not end in a file name; download it elsewhere and pass --weights "
                             "FILE")
    if name.endswith(".part"):
        raise DeployzooError(f"{url}: a file name ending in .part is what downloads are written through; download "
                             "it elsewhere and pass --weights FILE")
    return name


def download(url: str, expects: Sequence[Expected] = (), cache_dir: str | Path | None = None) -> Path:
    """`url` as a checked file under the weights cache (module docstring); a cached file that passes is reused
    without a request. Failures are one line: unreachable / offline, an HTTP error, a connection that kept
    dropping (what came is kept: running again resumes), a hash that differs (the file is deleted)."""
    name = file_name_of(url)
    root = weights_cache_dir(cache_dir)
    try:
        (root / ".meta").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployzooError(f"{root}: cannot create the weights cache ({exc.strerror or exc}); set DEPLOYZOO_CACHE "
                             "to a writable directory or pass --weights FILE") from None
    dest, part = root / name, root / f"{name}.part"
    with _locked(root / ".meta" / f"{name}.lock", url):
        if _cached_ok(dest, url, expects):
            return dest
        sha, size = _fetch(url, part)
        bad = next((e for e in expects if not e.matches(sha)), None)
        if bad is not None:
            part.unlink(missing_ok=True)
            dest.unlink(missing_ok=True)
            _meta(root, name).unlink(missing_ok=True)
            raise DeployzooError(f"{url}: sha256 mismatch: expected {bad.hex} ({bad.origin}), got {sha}; the "
                                 "download was deleted")
        try:
            os.replace(part, dest)
            _write_json(_meta(root, name), {
                "url": url, "file": name, "size": size, "sha256": sha,
                "checked": [{"sha256": e.hex, "origin": e.origin} for e in expects],
                "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        except OSError as exc:
            raise DeployzooError(f"{dest}: cannot write ({exc.strerror or exc})") from None
        _meta(root, f"{name}.part").unlink(missing_ok=True)
    what = f"{url} -> {dest} ({_mb(size)}, sha256 {sha}"
    if expects:
        log.info("downloaded %s, matches the %s)", what, " and the ".join(e.origin for e in expects))
    else:
        log.warning("downloaded %s): not verified, no sha256 is published for it (URL#sha256=HEX or "
                    "--weights-sha256 HEX checks one)", what)
    return dest


def _meta(root: Path, name: str) -> Path:
    return root / ".meta" / f"{name}.json"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def _locked(path: Path, url: str) -> Iterator[None]:
    """One download of a file at a time (flock; a second process waits, then finds the file cached)."""
    try:
        f = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot write ({exc.strerror or exc})") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another process downloading %s", url)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _cached_ok(dest: Path, url: str, expects: Sequence[Expected]) -> bool:
    """Whether the cached `dest` can be used as it is: it matches every expected hash, or (none expected) it is
    the file this URL gave, unchanged since."""
    if not dest.is_file():
        return False
    sha = file_sha256(dest)
    if expects:
        if all(e.matches(sha) for e in expects):
            log.info("%s: cached (sha256 %s matches)", dest, sha)
            return True
        log.warning("%s: cached file's sha256 %s does not match the expected %s; downloading it again", dest, sha,
                    ", ".join(e.hex for e in expects))
        return False
    rec = _read_json(_meta(dest.parent, dest.name))
    if rec.get("url") == url and rec.get("sha256") == sha:
        log.info("%s: cached (sha256 %s, as downloaded from %s; none published to check)", dest, sha, url)
        return True
    log.info("%s: cached file is not the one downloaded from %s; downloading it again", dest, url)
    return False


class _Restart(Exception):
    """The partial file does not fit the server's answer: it was deleted, the next request starts over."""


def _fetch(url: str, part: Path) -> tuple[str, int]:
    """Download into `part` (continuing what it holds) until whole; (sha256, size) of the whole part."""
    reason = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            done = _attempt(url, part)
        except _Restart as exc:
            reason = str(exc)
            continue
        if done is not None:
            return done
        reason = "the connection dropped before the end of the file"
        if attempt < ATTEMPTS:
            log.warning("%s: %s (%d bytes so far); resuming", url, reason, _size(part))
    raise DeployzooError(_cannot(url, reason, part))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _cannot(url: str, reason: str, part: Path) -> str:
    kept = _size(part)
    keep = f" ({kept} bytes kept in {part}: running again resumes)" if kept else ""
    return f"cannot download {url}: {reason}{keep}; download it elsewhere and pass --weights FILE"


def _reason(exc: BaseException) -> str:
    """The cause of a failed request in a few words ('Connection refused', 'Name or service not known')."""
    r = exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) \
        else exc
    if isinstance(r, (TimeoutError, socket.timeout)):
        return f"timed out after {TIMEOUT_S:g} s"
    if isinstance(r, OSError) and r.strerror:
        return r.strerror
    text = " ".join(str(r).split())
    return text or type(r).__name__


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header (`bytes 100-199/200`, `bytes */200`)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if m is None:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


def _attempt(url: str, part: Path) -> tuple[str, int] | None:
    """One request, continuing `part` from its size when it holds anything of this URL. (sha256, size) once the
    part is whole; None when the connection dropped first (the part keeps what came)."""
    state_path = _meta(part.parent, part.name)
    have = _size(part)
    state = _read_json(state_path) if have else {}
    if have and state.get("url") != url:  # a part of another URL of the same name: start over
        part.unlink(missing_ok=True)
        have = 0
    headers = {"User-Agent": f"deployzoo/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if state.get("validator"):
            headers["If-Range"] = state["validator"]
    log.info("downloading %s -> %s%s", url, part.with_suffix(""), f" (resuming at {have} bytes)" if have else "")
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        total = _content_range(exc.headers.get("Content-Range") if exc.headers else None)[1]
        try:
            exc.close()
        except Exception:  # noqa: BLE001 - an error response without a body to close
            pass
        if exc.code == 416 and have:  # nothing after `have`: whole already, or not this file
            if total == have:
                return _hash(part), have
            part.unlink(missing_ok=True)
            raise _Restart("the server refused to continue the partial download") from None
        raise DeployzooError(_cannot(url, f"HTTP {exc.code} {exc.reason}", part)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DeployzooError(_cannot(url, _reason(exc), part)) from None
    with resp:
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Restart(f"the server answered the resume at byte {have} from byte {start}")
        else:  # the whole file: Range ignored, or the file changed since the part began (If-Range)
            if have:
                log.info("%s: the server sent the whole file; starting over", url)
            have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        etag = resp.headers.get("ETag") or ""
        validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        _write_json(state_path, {"url": url, "validator": validator, "total": total})
        h = _hash(part, hashlib.sha256()) if have else hashlib.sha256()
        got = have
        try:
            f = open(part, "ab" if have else "wb")
        except OSError as exc:
            raise DeployzooError(f"{part}: cannot write ({exc.strerror or exc})") from None
        with f, progress_bar(f"download {part.with_suffix('').name}", total, unit="bytes", completed=have) as bar:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, http.client.HTTPException):  # reset, timed out, cut short
                    break
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as exc:
                    raise DeployzooError(f"{part}: cannot write ({exc.strerror or exc})") from None
                h.update(block)
                got += len(block)
                bar.advance(len(block))
    if total is not None and got < total:
        return None
    if total is not None and got > total:
        part.unlink(missing_ok=True)
        raise _Restart(f"the server sent {got} bytes of a {total}-byte file")
    if total is None and got == have:  # an unknown length and nothing came: not a whole file
        return None
    return h.hexdigest(), got


def _hash(path: Path, h: Any = None) -> Any:
    """sha256 of a file: its hex digest, or `h` updated with it."""
    if h is None:
        return file_sha256(path)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h
