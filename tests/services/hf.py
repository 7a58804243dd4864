"""The Hugging Face Hub's HTTP API on 127.0.0.1, serving one model repository.

``run_corrdiff.py --model cmip6`` fetches ``hf://nvidia/corrdiff-cmip6-era5@<commit>``
file by file through earth2studio 0.19's ``Package`` (``earth2studio/models/auto/
package.py``: huggingface_hub's ``HfFileSystem`` inside fsspec's whole-file cache). For
the first file, huggingface_hub 2.4.0 (``hf_file_system.py``) sends, to the endpoint
``HF_ENDPOINT`` names (read at import into ``constants.ENDPOINT`` and
``constants.HUGGINGFACE_CO_URL_TEMPLATE``)::

    GET /api/models/{repo_id}/revision/{revision}   (/api/models/{repo_id}: none named)
    GET /api/models/{repo_id}/tree/{revision}?recursive=false&expand=false
    GET /{repo_id}/resolve/{revision}/{name}          (-> 302 -> CDN, for an LFS file)

and for every later one only its ``resolve`` (and the redirect). In turn:

``revision``
    ``HfFileSystem.resolve_path`` -> ``_repo_and_revision_exist`` -> ``HfApi.repo_info``
    -> ``HfApi.model_info``, once per file system instance and revision: 200 with the
    model's JSON (``ModelInfo``: ``id``, ``sha``, ``siblings``...). The Hub's 404 with
    ``X-Error-Code: RevisionNotFound``, or 401 with ``X-Error-Code: RepoNotFound``,
    become ``RevisionNotFoundError`` / ``RepositoryNotFoundError``
    (``utils/_http.py: hf_raise_for_status``), which ``_raise_file_not_found`` turns into
    ``FileNotFoundError`` ("... (revision not found)"). No retry (a plain
    ``get_session().get`` with ``HF_HUB_ETAG_TIMEOUT``).
``tree``
    ``HfFileSystem.get_file`` -> ``info`` -> ``ls`` -> ``_ls_tree`` ->
    ``HfApi.list_repo_tree`` (``utils/_pagination.py: _paginate_pages`` through
    ``http_backoff``, which retries 5xx and network errors): the top folder's entries,
    ``{"type", "oid", "size", "path"}``, with ``"lfs": {"oid", "size", "pointerSize"}``
    for an LFS file. It is kept in the instance's ``dircache``: a name absent from it is
    ``FileNotFoundError`` without another request, and ``url()``'s ``isdir`` is answered
    from it. One page (a ``Link: <...>; rel="next"`` header would ask for the next).
``resolve``
    ``HfFileSystem.get_file`` -> ``file_download.http_get`` (a streamed GET, no
    ``Range`` from offset 0; the length must equal the listing's ``size``). The Hub
    answers a file stored in git itself (``ETag``: its blob id, ``X-Repo-Commit``) and
    an LFS file with a 302 to its CDN (``Location``, ``X-Linked-Size``,
    ``X-Linked-Etag``: the sha256), which the client follows
    (``utils/_http.py: default_client_factory``, ``follow_redirects=True``).
    :data:`CDN_PREFIX` is that CDN here, content-addressed as the Hub's is. A name the
    revision lacks is 404 ``X-Error-Code: EntryNotFound``.

Nothing else is served (unknown routes are the Hub's bare 404; ``HEAD``, and ``POST
/api/models/{repo}/paths-info/{rev}``, which ``info`` falls back to for a folder it has
not listed, are not reached by a package fetch and would show up in :attr:`requests`).
Nor is Xet storage: with ``hf_xet`` installed (it is), a listing entry carrying
``xetHash`` makes ``get_file`` download through ``xet_get`` from a separate CAS service.
This stand-in lists no ``xetHash``, as the Hub does for files in git or plain LFS.

:attr:`HubServer.fault` switches the answers to a failure: ``"unknown-repo"`` (401
``RepoNotFound``, the Hub's answer to an anonymous request for a repository that does not
exist or is private) or ``"unavailable"`` (503 from every route). A revision other than
the served commit or ``main`` is answered as the Hub does (404 ``RevisionNotFound``), and
:meth:`HubServer.remove` takes a file out of the repository.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from services.loopback import Loopback

#: The repository ``corrdiff_tools.models.cmip6.DEFAULT_PACKAGE`` names, and its commit.
REPO_ID = "nvidia/corrdiff-cmip6-era5"
COMMIT = "f756fad5b85efec64df4868aead14dda698b8aea"
#: The branch the Hub resolves when a request names no revision.
DEFAULT_BRANCH = "main"
#: Files stored in Git LFS, by suffix (the rest are git blobs).
LFS_SUFFIXES = (".mdlus", ".nc")
#: Where an LFS file's ``resolve`` redirects to (the Hub's is cdn-lfs / cas-bridge).
CDN_PREFIX = "/cdn-lfs/"
#: Faults :attr:`HubServer.fault` accepts (None: answer correctly).
FAULTS = ("unknown-repo", "unavailable")
#: Route words followed by a revision in the Hub's paths.
REVISION_WORDS = ("revision", "tree", "resolve")


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob holding ``data`` (what the Hub lists as ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer file git stores in place of ``data``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n".encode()


class HubServer:
    """A threaded HTTP server on 127.0.0.1 standing in for huggingface.co.

    Parameters
    ----------
    files : Path or dict
        The repository's files at ``commit``: a folder's (its top level), or names and
        contents.
    repo_id, commit : str
        The repository and its one commit, which :data:`DEFAULT_BRANCH` points to.
    """

    def __init__(
        self, files: Path | dict[str, bytes], repo_id: str = REPO_ID, commit: str = COMMIT
    ) -> None:
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        self.files = dict(files)
        self.repo_id = repo_id
        self.commit = commit
        self.fault: str | None = None
        self._stopped = False
        #: (method, path with query) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loopback = Loopback(_Handler, self, "Hub server")
        self.port = self._loopback.port
        #: What ``HF_ENDPOINT`` is set to.
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove(self, name: str) -> None:
        """Take ``name`` out of the repository (a package that lacks a file)."""
        with self._lock:
            del self.files[name]

    def record(self, method: str, path: str) -> None:
        """Note a request (handlers run on their own threads)."""
        with self._lock:
            self.requests.append((method, path))

    def seen(self) -> list[tuple[str, str]]:
        """The requests so far, in order."""
        with self._lock:
            return list(self.requests)

    def resolved(self) -> list[str]:
        """The file names requested through ``resolve``, in order."""
        marker = f"/{self.repo_id}/resolve/"
        return [
            unquote(urlsplit(path).path).rsplit("/", 1)[-1]
            for method, path in self.seen()
            if method == "GET" and path.startswith(marker)
        ]

    def revisions(self) -> set[str]:
        """Every revision a request's path named (``revision``, ``tree``, ``resolve``)."""
        found = set()
        for _, path in self.seen():
            words = urlsplit(path).path.split("/")
            for word in REVISION_WORDS:
                if word in words[:-1]:
                    found.add(unquote(words[words.index(word) + 1]))
        return found

    def stop(self) -> None:
        """Stop serving and close the socket; the serving thread is joined. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._loopback.stop()

    # ------------------------------------------------------------------ the repository

    def known(self, revision: str) -> bool:
        """Whether ``revision`` exists: the default branch or the full commit id."""
        return revision in (self.commit, DEFAULT_BRANCH)

    def entry(self, name: str) -> dict[str, object]:
        """A file's entry in a tree listing, as the Hub writes it."""
        data = self.files[name]
        if name.endswith(LFS_SUFFIXES):
            pointer = lfs_pointer(data)
            lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                   "pointerSize": len(pointer)}  # fmt: skip
            return {"type": "file", "oid": git_blob_id(pointer), "size": len(data),
                    "lfs": lfs, "path": name}  # fmt: skip
        return {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}

    def model_info(self) -> dict[str, object]:
        """``/api/models/{repo}/revision/{rev}``'s JSON: the fields ``ModelInfo`` reads."""
        return {
            "_id": hashlib.md5(self.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/", 1)[0],
            "sha": self.commit,
            "lastModified": "2025-09-01T00:00:00.000Z",
            "createdAt": "2025-08-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["region:us"],
            "siblings": [{"rfilename": name} for name in sorted(self.files)],
            "usedStorage": sum(len(data) for data in self.files.values()),
        }

    def by_sha256(self, digest: str) -> bytes | None:
        """The LFS object whose sha256 is ``digest`` (what the CDN serves)."""
        with self._lock:
            contents = list(self.files.values())
        return next((data for data in contents if hashlib.sha256(data).hexdigest() == digest), None)


class _Handler(BaseHTTPRequestHandler):
    service: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Quiet: the test reads :attr:`HubServer.requests` instead."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        service = self.service
        service.record(self.command, self.path)
        path = urlsplit(self.path).path
        api = f"/api/models/{service.repo_id}/"
        resolve = f"/{service.repo_id}/resolve/"
        if service.fault == "unavailable":
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, None, "Service Unavailable")
        elif path.startswith(CDN_PREFIX):
            self._cdn(path[len(CDN_PREFIX) :])
        elif path.startswith("/api/models/") and not f"{path}/".startswith(api):
            self._error(HTTPStatus.UNAUTHORIZED, "RepoNotFound", "Repository not found")
        elif service.fault == "unknown-repo" and f"{path}/".startswith((api, resolve)):
            self._error(HTTPStatus.UNAUTHORIZED, "RepoNotFound", "Repository not found")
        elif f"{path}/" == api:  # no revision named: the default branch's
            self._json(service.model_info())
        elif path.startswith(api):
            self._api(path[len(api) :].split("/"))
        elif path.startswith(resolve):
            revision, _, name = path[len(resolve) :].partition("/")
            self._resolve(unquote(revision), unquote(name))
        else:
            self._error(HTTPStatus.NOT_FOUND, None, "Not Found")

    # ------------------------------------------------------------------ routes

    def _api(self, words: list[str]) -> None:
        """``revision/{rev}`` and ``tree/{rev}[/{folder}]``."""
        if len(words) < 2 or words[0] not in ("revision", "tree"):
            self._error(HTTPStatus.NOT_FOUND, None, "Not Found")
            return
        kind, revision, folder = words[0], unquote(words[1]), unquote("/".join(words[2:]))
        service = self.service
        if not service.known(revision):
            self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        elif kind == "revision" and not folder:
            self._json(service.model_info())
        elif kind == "tree" and not folder:
            self._json([service.entry(name) for name in sorted(service.files)])
        elif kind == "tree":  # the repository has no folders
            message = f'{folder} does not exist on "{revision}"'
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", message)
        else:
            self._error(HTTPStatus.NOT_FOUND, None, "Not Found")

    def _resolve(self, revision: str, name: str) -> None:
        service = self.service
        if not service.known(revision):
            self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if name not in service.files:
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", "Entry not found")
            return
        data = service.files[name]
        entry = service.entry(name)
        headers = {"X-Repo-Commit": service.commit, "ETag": f'"{entry["oid"]}"'}
        if "lfs" in entry:
            sha256 = hashlib.sha256(data).hexdigest()
            headers |= {
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "Location": f"{service.url}{CDN_PREFIX}repos/{service.repo_id}/{sha256}",
            }
            self._send(HTTPStatus.FOUND, b"", headers, "text/plain; charset=utf-8")
            return
        headers["Accept-Ranges"] = "bytes"
        self._send(HTTPStatus.OK, data, headers, "application/octet-stream")

    def _cdn(self, key: str) -> None:
        """An LFS object's bytes by its sha256, as the CDN serves them."""
        data = self.service.by_sha256(key.rsplit("/", 1)[-1])
        if data is None:
            self._send(HTTPStatus.FORBIDDEN, b"<Error><Code>AccessDenied</Code></Error>", {},
                       "application/xml")  # fmt: skip
            return
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        self._send(HTTPStatus.OK, data, headers, "application/octet-stream")

    # ------------------------------------------------------------------ answers

    def _error(self, status: HTTPStatus, code: str | None, message: str) -> None:
        """The Hub's error answer: JSON ``{"error": ...}`` and ``X-Error-*`` headers."""
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        data = json.dumps({"error": message}).encode()
        self._send(status, data, headers, "application/json; charset=utf-8")

    def _json(self, document: object) -> None:
        data = json.dumps(document).encode()
        self._send(HTTPStatus.OK, data, {}, "application/json; charset=utf-8")

    def _send(
        self, status: HTTPStatus, data: bytes, headers: dict[str, str], content_type: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
