"""A small Hugging Face Hub-compatible HTTP server for the tests (standard library only).

It implements the part of the Hub's HTTP API that the unmodified `huggingface_hub` client (2.x) uses to push and pull
model repositories, so that `push_to_hub`, `hf_hub_download`, `snapshot_download`, `PeftModel.from_pretrained` and
`transformers`' `from_pretrained` run end to end without contacting huggingface.co. Written against the client code
(`hf_api.py`, `_commit_api.py`, `lfs.py`, `file_download.py`, `utils/_http.py`), not only against recorded traffic.

Endpoints (model repositories only; `{rev}` is URL-quoted, so branch names may contain `/`):

| request | used by |
| --- | --- |
| `POST /api/repos/create` (409 with the repo's `url` when it exists) | `create_repo` |
| `DELETE /api/repos/delete` | `delete_repo` |
| `POST /api/validate-yaml` (parses the README front matter; 400 on invalid YAML) | `create_commit` of a README |
| `POST /api/models/{repo}/preupload/{rev}` (`"lfs"` for weights and files >= 10 MiB, else `"regular"`) | commits |
| `POST /{repo}.git/info/lfs/objects/batch`, `PUT /_lfs/{oid}`, `POST /_lfs/{oid}/verify` | basic LFS upload |
| `POST /api/models/{repo}/commit/{rev}` (ndjson, `Content-Length` or chunked) | `create_commit` |
| `POST`/`DELETE /api/models/{repo}/branch/{branch}`, `POST /api/models/{repo}/tag/{rev}`, `GET .../refs` | refs |
| `GET /api/models/{repo}[/revision/{rev}]` (`sha`, `siblings`), `GET .../tree/{rev}[/{path}]` | `repo_info`, lists |
| `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (`X-Repo-Commit`, `ETag`, `Content-Length`) | downloads |
| `GET /api/whoami-v2` | `whoami` |
| `GET /_test/requests`, `/_test/errors`, `/_test/unhandled` | the tests (see below) |

For the tests, `/_test/requests` returns the request log (method, path, query, status, `Authorization` header,
duration), `/_test/errors` the emulation failures (answered with 500) and `/_test/unhandled` the requests for
endpoints it does not emulate (answered with 404).

Errors carry the Hub's `X-Error-Code` header so that the client raises its usual exceptions: an unknown repository is
`404 RepoNotFound` (`RepositoryNotFoundError`), an unknown revision `404 RevisionNotFound`, an unknown file
`404 EntryNotFound` (with `X-Repo-Commit`, as the Hub sends it). There are no Xet endpoints: with `hf_xet` installed
the client would ask `/api/models/{repo}/xet-write-token/{rev}` for "lfs" files, so the tests set
`HF_HUB_DISABLE_XET=1` and the client uses the basic LFS transfer (a single `PUT` per file). Authentication is not
checked, but every `Authorization` header is logged so the tests can assert that only their dummy token is ever sent.
Repositories and commits live in memory (a new repository gets an initial commit with `.gitattributes`, as on the
Hub); file contents are stored by sha256 under the storage directory.

Run it on its own with `python tests/hub_server.py [--port 0] [--storage DIR]`: it prints one JSON line with its
`url` (port 0 picks a free port) and serves until interrupted, or, with `--exit-on-stdin-eof`, until its standard
input closes (what the test suite uses, so that the server never outlives the test process that started it).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

#: Files stored with LFS (the Hub's default `.gitattributes` patterns that matter here), besides files >= 10 MiB.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".zip", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
USER = "test-user"
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """An HTTP error answer: status, the Hub's `X-Error-Code` and a message."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, str]  # path -> sha256 of the content
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubState:
    """The repositories (in memory) and the content-addressed blob store (on disk)."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.blobs = storage / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self._counter = 0

    # blobs -----------------------------------------------------------------------------------------------------

    def put_blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        path = self.blobs / sha
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            tmp.replace(path)
        return sha

    def has_blob(self, sha: str, size: int | None = None) -> bool:
        path = self.blobs / sha
        return path.exists() and (size is None or path.stat().st_size == size)

    def read_blob(self, sha: str) -> bytes:
        return (self.blobs / sha).read_bytes()

    # repos and revisions ---------------------------------------------------------------------------------------

    def repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and _COMMIT_HASH.match(revision) and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo.commits[oid]

    def new_commit(self, repo: Repo, parent: Commit | None, message: str, files: dict[str, str]) -> Commit:
        self._counter += 1
        seed = json.dumps([repo.repo_id, parent.oid if parent else None, message, sorted(files.items()), self._counter])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, message, files, _now())
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        initial = self.new_commit(repo, None, "initial commit", {".gitattributes": self.put_blob(GITATTRIBUTES)})
        repo.branches["main"] = initial.oid
        self.repos[repo_id] = repo
        return repo

    def file_entry(self, path: str, sha: str) -> dict[str, Any]:
        """A `/tree` entry, with the `lfs` block for LFS files as the Hub sends it."""
        size = (self.blobs / sha).stat().st_size
        entry: dict[str, Any] = {"type": "file", "path": path, "size": size}
        if is_lfs(path, size):
            entry["oid"] = _git_blob_sha1(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\n".encode())
            entry["lfs"] = {"oid": sha, "size": size, "pointerSize": 134}
        else:
            entry["oid"] = _git_blob_sha1(self.read_blob(sha))
        return entry


def is_lfs(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


# ---------------------------------------------------------------------------------------------------------------------
# request handling

_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+|[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+|[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_LFS_BATCH = re.compile(r"^/(?P<repo>[^/]+/[^/]+|[^/]+)\.git/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})(?P<verify>/verify)?$")


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the Hub emulation of [`HubState`]."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: HubHTTPServer

    # plumbing --------------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's signature)
        pass  # the request log is in `server.requests`

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        body = self._body()
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, None, f"Invalid JSON body: {error}") from error

    def _send(
        self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _dispatch(self) -> None:
        self._status = 0
        url = urlsplit(self.path)
        started = time.perf_counter()
        try:
            with self.server.state.lock:
                self._route(url.path, parse_qs(url.query))
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._send_json({"error": error.message}, error.status, headers)
        except Exception as error:  # a bug in the emulation: answer 500 and log it, never hang the client
            self.server.errors.append(f"{self.command} {self.path}: {error!r}")
            self._send_json({"error": f"test hub server error: {error!r}"}, 500)
        finally:
            self.server.requests.append(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": url.query,
                    "status": self._status,
                    "authorization": self.headers.get("Authorization"),
                    "seconds": round(time.perf_counter() - started, 4),
                }
            )

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815

    @property
    def base_url(self) -> str:
        return self.server.url

    # routing ---------------------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        method = self.command
        if path == "/_test/requests" and method == "GET":
            return self._send_json(list(self.server.requests))
        if path == "/_test/errors" and method == "GET":
            return self._send_json(list(self.server.errors))
        if path == "/_test/unhandled" and method == "GET":
            return self._send_json(list(self.server.unhandled))
        if path == "/api/whoami-v2" and method == "GET":
            return self._send_json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [], "auth": {}})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(self._json_body())
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(self._json_body())
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(self._json_body())
        if match := _LFS_BATCH.match(path):
            if method == "POST":
                return self._lfs_batch(unquote(match["repo"]), self._json_body())
        if match := _LFS_OBJECT.match(path):
            if method == "PUT" and not match["verify"]:
                return self._lfs_put(match["oid"])
            if method == "POST" and match["verify"]:
                return self._lfs_verify(match["oid"], self._json_body())
        if match := _API_REPO.match(path):
            return self._api_repo(unquote(match["repo"]), match["rest"] or "", query)
        if (match := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
            return self._resolve(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]))
        self.server.unhandled.append(f"{method} {path}")
        raise HubError(404, None, f"Not found (not emulated by the test hub): {method} {path}")

    def _api_repo(self, repo_id: str, rest: str, query: dict[str, list[str]]) -> None:
        method = self.command
        state = self.server.state
        repo = state.repo(repo_id)
        if rest in ("", "/") and method == "GET":
            return self._send_json(self._repo_info(repo, state.resolve(repo, "main")))
        if match := re.match(r"^/revision/(?P<rev>[^/]+)$", rest):
            return self._send_json(self._repo_info(repo, state.resolve(repo, unquote(match["rev"]))))
        if match := re.match(r"^/tree/(?P<rev>[^/]+)(?P<path>/.*)?$", rest):
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._tree(repo, unquote(match["rev"]), unquote(match["path"] or "").strip("/"), recursive)
        if match := re.match(r"^/preupload/(?P<rev>[^/]+)$", rest):
            return self._preupload(repo, unquote(match["rev"]), self._json_body(), query)
        if match := re.match(r"^/commit/(?P<rev>[^/]+)$", rest):
            return self._commit(repo, unquote(match["rev"]), self._body(), query)
        if match := re.match(r"^/branch/(?P<branch>[^/]+)$", rest):
            return self._branch(repo, unquote(match["branch"]), self._json_body())
        if match := re.match(r"^/tag/(?P<rev>[^/]+)$", rest):
            return self._tag(repo, unquote(match["rev"]), self._json_body())
        if rest == "/refs" and method == "GET":
            return self._send_json(
                {
                    "branches": [
                        {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()
                    ],
                    "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
                    "converts": [],
                }
            )
        self.server.unhandled.append(f"{method} /api/models/{repo_id}{rest}")
        raise HubError(404, None, f"Not found (not emulated by the test hub): {method} /api/models/{repo_id}{rest}")

    # repositories ----------------------------------------------------------------------------------------------

    def _create_repo(self, payload: dict) -> None:
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, None, "The test hub only hosts model repositories.")
        name, organization = payload.get("name"), payload.get("organization") or USER
        if not isinstance(name, str) or not _REPO_NAME.match(name) or not _REPO_NAME.match(organization):
            raise HubError(400, None, f"Invalid repository name {organization}/{name}.")
        repo_id = f"{organization}/{name}"
        url = f"{self.base_url}/{repo_id}"
        state = self.server.state
        if repo_id in state.repos:
            return self._send_json({"error": "You already created this model repo", "url": url}, 409)
        state.create_repo(repo_id, bool(payload.get("private")))
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
        self.server.state.repo(repo_id)
        del self.server.state.repos[repo_id]
        self._send_json({})

    def _repo_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.commits[next(iter(repo.commits))].date,
            "lastModified": commit.date,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _tree(self, repo: Repo, revision: str, folder: str, recursive: bool) -> None:
        state = self.server.state
        commit = state.resolve(repo, revision)
        prefix = f"{folder}/" if folder else ""
        if folder and not any(path.startswith(prefix) for path in commit.files):
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        entries, folders = [], set()
        for path, sha in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(state.file_entry(path, sha))
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders]
        self._send_json(sorted(entries, key=lambda entry: entry["path"]))

    def _branch(self, repo: Repo, branch: str, payload: dict) -> None:
        state = self.server.state
        if self.command == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            del repo.branches[branch]
            return self._send_json({})
        if self.command != "POST":
            raise HubError(405, None, "Method not allowed")
        if branch in repo.branches:
            raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
        start = state.resolve(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        self._send_json({})

    def _tag(self, repo: Repo, revision: str, payload: dict) -> None:
        tag = payload.get("tag")
        if not isinstance(tag, str) or not tag:
            raise HubError(400, None, "Missing tag name.")
        if tag in repo.tags:
            raise HubError(409, None, f"Tag already exists: {tag}")
        repo.tags[tag] = self.server.state.resolve(repo, revision).oid
        self._send_json({})

    # downloads -------------------------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        state = self.server.state
        repo = state.repo(repo_id)
        commit = state.resolve(repo, revision)
        sha = commit.files.get(path)
        if sha is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": commit.oid})
        content = state.read_blob(sha)
        etag = sha if is_lfs(path, len(content)) else _git_blob_sha1(content)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "none"}
        self._send(200, content, "application/octet-stream", headers)

    # uploads ---------------------------------------------------------------------------------------------------

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match:
            try:
                import yaml  # PyYAML, a dependency of huggingface_hub's card tooling; optional here

                metadata = yaml.safe_load(match.group(1))
            except ImportError:
                metadata = {}
            except Exception as error:  # yaml.YAMLError
                return self._send_json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, 400)
            if metadata is not None and not isinstance(metadata, dict):
                return self._send_json({"errors": [{"message": "Metadata must be a YAML mapping."}]}, 400)
        self._send_json({"errors": [], "warnings": []})

    def _preupload(self, repo: Repo, revision: str, payload: dict, query: dict) -> None:
        if "create_pr" in query:
            raise HubError(400, None, "The test hub does not support pull requests.")
        commit = self.server.state.resolve(repo, revision)
        files = []
        for item in payload.get("files", []):
            mode = "lfs" if is_lfs(item["path"], int(item["size"])) else "regular"
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": None})
        self._send_json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str, payload: dict) -> None:
        state = self.server.state
        state.repo(repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, None, "The test hub only serves LFS uploads through the batch API.")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not state.has_blob(oid, size):
                answer["actions"] = {
                    "upload": {"href": f"{self.base_url}/_lfs/{oid}", "header": {}},
                    "verify": {"href": f"{self.base_url}/_lfs/{oid}/verify", "header": {}},
                }
            objects.append(answer)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), "application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        content = self._body()
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, None, f"The uploaded content does not match the LFS oid {oid}.")
        self.server.state.put_blob(content)
        self._send(200)

    def _lfs_verify(self, oid: str, payload: dict) -> None:
        if not self.server.state.has_blob(oid, payload.get("size")):
            raise HubError(404, None, f"LFS object {oid} was not uploaded.")
        self._send_json({})

    def _commit(self, repo: Repo, revision: str, body: bytes, query: dict) -> None:
        state = self.server.state
        if "create_pr" in query:
            raise HubError(400, None, "The test hub does not support pull requests.")
        if revision not in repo.branches:
            if revision in repo.tags or revision in repo.commits:
                raise HubError(400, None, f"Commits go to a branch; {revision!r} is not a branch.")
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        header: dict[str, Any] = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"]
                files[value["path"]] = state.put_blob(content if isinstance(content, bytes) else content.encode())
            elif key == "lfsFile":
                if not state.has_blob(value["oid"], value.get("size")):
                    raise HubError(400, None, f"LFS object {value['oid']} of {value['path']} was never uploaded.")
                files[value["path"]] = value["oid"]
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: sha for path, sha in files.items() if not path.startswith(prefix)}
            else:
                raise HubError(400, None, f"Unknown commit operation {key!r}.")
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, None, f"The parent commit {parent} is not the head of {revision} ({head.oid}).")
        commit = state.new_commit(repo, head, header.get("summary", ""), files)
        repo.branches[revision] = commit.oid
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.base_url}/{repo.repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            }
        )


class HubHTTPServer(ThreadingHTTPServer):
    """The HTTP server with the Hub state, the request log and the emulation errors."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: HubState) -> None:
        super().__init__(address, HubRequestHandler)
        self.state = state
        self.requests: list[dict[str, Any]] = []
        self.unhandled: list[str] = []
        self.errors: list[str] = []
        host, port = self.server_address[:2]
        self.url = f"http://{host}:{port}"


class HubServer:
    """Run the test Hub in a background thread: `with HubServer() as hub: hub.url`.

    Args:
        storage (`str` or `Path`, *optional*):
            Directory for the stored files; a temporary directory (removed on `stop`) by default.
        port (`int`, defaults to 0):
            Port on 127.0.0.1; 0 picks a free one.
    """

    def __init__(self, storage: str | Path | None = None, port: int = 0) -> None:
        self._own_storage = storage is None
        self.storage = Path(tempfile.mkdtemp(prefix="mudpt-test-hub-")) if storage is None else Path(storage)
        self.httpd = HubHTTPServer(("127.0.0.1", port), HubState(self.storage))
        self.url = self.httpd.url
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
        if self._own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def hub_url(base: str, repo_id: str, revision: str, path: str) -> str:
    """The `resolve` URL of a file (what `huggingface_hub.hf_hub_url` builds)."""
    return f"{base}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free port)")
    parser.add_argument("--storage", default=None, help="storage directory (default: a temporary one)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input closes")
    args = parser.parse_args(argv)
    server = HubServer(args.storage, args.port).start()
    print(json.dumps({"url": server.url, "storage": str(server.storage)}), flush=True)
    try:
        if args.exit_on_stdin_eof:
            sys.stdin.read()  # returns when the parent closes the pipe, or dies
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
