"""`archer data fetch` / `archer data list`: every registered file has a source under the
loader's relpath; downloads resume with Range requests and are checked by sha256.

No internet here: files are served by a local HTTP server on 127.0.0.1 (with Range support),
and a Source's url is pointed at it (the network boundary)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import pickle
import re
import socket
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from archer.data import fetch as fetch_mod
from archer.data.datasets import FILES, load_dataset
from archer.data.fetch import ChecksumError, FetchError, fetch
from archer.data.manifest import MANIFEST_NAME, read_manifest
from archer.data.sources import NOT_FETCHABLE, SOURCES, Source
from archer.paths import data_dir, user_data_dir

REPO = Path(__file__).resolve().parents[1]
AMC = b"".join(json.dumps({"id": i, "problem": f"What is {i}+{i}?", "answer": float(2 * i)})
               .encode() + b"\n" for i in range(1, 201))


# ---------------------------------------------------------------- local file server


class FileServer:
    """Serves ``files`` (path -> bytes); honours ``Range: bytes=N-``; ``drop[path] = n``
    makes the next response for ``path`` announce the full length, send ``n`` bytes and close
    the connection. ``requests`` records (path, Range header) per request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = server.drop.pop(self.path, None)
                self.wfile.write(part if cut is None else part[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def amc(server, monkeypatch):
    """``amc23`` served locally: (server, its bytes' sha256)."""
    server.files["/amc23/test.jsonl"] = AMC
    monkeypatch.setitem(SOURCES, "amc23", dataclasses.replace(
        SOURCES["amc23"], url=server.url + "/amc23/test.jsonl"))
    return server, hashlib.sha256(AMC).hexdigest()


def _cli(argv: list[str]) -> int:
    """The real ``archer`` command (parse, key=value settings, dispatch)."""
    from archer_cli.main import main

    return main(argv)


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", refuse)


# ---------------------------------------------------------------- the mapping


def test_every_registered_file_has_a_source_under_the_loaders_relpath():
    for name in FILES.names():
        assert (name in SOURCES) != (name in NOT_FETCHABLE), name
        if name in SOURCES:
            assert SOURCES[name].relpath == FILES.get(name).relpath, name
            assert SOURCES[name].registered, name
        else:
            assert isinstance(NOT_FETCHABLE[name], str) and NOT_FETCHABLE[name].strip()
    for name, src in SOURCES.items():  # a Source outside FILES says it is read by --data-file
        assert (name in FILES) == src.registered, name
    relpaths = [s.relpath for s in SOURCES.values()]
    assert len(set(relpaths)) == len(relpaths)


def test_every_file_a_data_config_or_recipe_reads_is_fetchable():
    from evals.registry import BENCHMARKS

    # the data group's files set data.* (and reward/template) at the config's root
    files = {(yaml.safe_load(p.read_text()).get("data") or {}).get("file")
             for p in (REPO / "experiments/conf/data").glob("*.yaml")} - {None}
    assert {"math_train", "leetcode_train", "gsm8k_train"} <= files
    for p in (REPO / "experiments/conf/recipe").glob("*.yaml"):
        for bench in (yaml.safe_load(p.read_text()).get("eval") or {}).get("benchmarks", []):
            files.add(BENCHMARKS.get(bench).source)
    files -= {"humaneval", "reasoning_gym"}  # a package's file, generated problems
    assert {"lcb_v5_public", "math500", "aime2024"} <= files
    assert files <= set(SOURCES)


def test_lcb_v5_and_math500_benchmark_paths_are_the_fetch_targets(tmp_path):
    from evals.registry import BENCHMARKS

    for bench in BENCHMARKS.names():
        b = BENCHMARKS.get(bench)
        if b.source in FILES:
            assert b.data_path(tmp_path) == tmp_path / SOURCES[b.source].relpath, bench
    assert BENCHMARKS.get("lcb_v5").data_path(tmp_path) == tmp_path / "eval_code/lcb_v5_public.jsonl"
    assert BENCHMARKS.get("math500").data_path(tmp_path).name == "math500.json"


# ---------------------------------------------------------------- fetch


def test_fetch_writes_the_loaders_path_and_records_the_sha256(amc, tmp_path, capsys):
    server, digest = amc
    path = fetch("amc23", tmp_path, progress=False)
    assert path == tmp_path / FILES.get("amc23").relpath
    assert path.read_bytes() == AMC
    ds = load_dataset("amc23", data_dir=tmp_path)
    assert len(ds) == 200 and ds[2]["answer"] == "6"  # 6.0 in the file
    rec = read_manifest(tmp_path)["amc23"]
    assert (rec["sha256"], rec["bytes"], rec["relpath"]) == (digest, len(AMC), "eval_math/amc23.jsonl")
    assert not list(tmp_path.rglob("*.part"))
    # a second fetch finds the file up to date and downloads nothing
    assert _cli(["data", "fetch", "amc23", f"data_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.rstrip().split("\t")[:3] == ["amc23", "kept (already there; "
                                                        "overwrite=true fetches it again)", str(path)]
    assert len(server.requests) == 1
    assert _cli(["data", "fetch", "amc23", "overwrite=true", f"data_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "fetched" and len(server.requests) == 2


def test_interrupted_fetch_keeps_the_part_and_a_rerun_resumes_with_range(amc, tmp_path):
    server, digest = amc
    half = len(AMC) // 2
    server.drop["/amc23/test.jsonl"] = half
    with pytest.raises(FetchError, match="rerun the same command to resume"):
        fetch("amc23", tmp_path, retries=0, progress=False)
    part = tmp_path / "eval_math/amc23.jsonl.part"
    assert part.stat().st_size == half and not (tmp_path / "eval_math/amc23.jsonl").exists()
    path = fetch("amc23", tmp_path, retries=0, progress=False)
    assert server.requests == [("/amc23/test.jsonl", None),
                               ("/amc23/test.jsonl", f"bytes={half}-")]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert read_manifest(tmp_path)["amc23"]["sha256"] == digest and not part.exists()


def test_dropped_connection_is_resumed_within_one_fetch(amc, tmp_path):
    server, digest = amc
    server.drop["/amc23/test.jsonl"] = 1000
    path = fetch("amc23", tmp_path, retries=2, progress=False)
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_an_existing_part_file_resumes_and_a_complete_one_is_used(amc, tmp_path):
    server, digest = amc
    part = tmp_path / "eval_math/amc23.jsonl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(AMC[:100])
    fetch("amc23", tmp_path, progress=False)
    assert server.requests == [("/amc23/test.jsonl", "bytes=100-")]
    (tmp_path / "eval_math/amc23.jsonl").unlink()
    part.write_bytes(AMC)  # complete .part: the server answers 416 with the same length
    path = fetch("amc23", tmp_path, progress=False)
    assert server.requests[-1] == ("/amc23/test.jsonl", f"bytes={len(AMC)}-")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_gzipped_source_is_stored_decompressed(server, monkeypatch, tmp_path):
    import gzip

    server.files["/amc.jsonl.gz"] = gzip.compress(AMC)
    monkeypatch.setitem(SOURCES, "amc23", dataclasses.replace(
        SOURCES["amc23"], url=server.url + "/amc.jsonl.gz", gzipped=True))
    path = fetch("amc23", tmp_path, progress=False)
    assert path.read_bytes() == AMC and not list(tmp_path.rglob("*.part"))


def test_checksum_mismatch_with_the_pinned_digest_names_the_file_and_both(amc, monkeypatch,
                                                                          tmp_path):
    _, digest = amc
    wrong = "0" * 64
    monkeypatch.setitem(SOURCES, "amc23", dataclasses.replace(SOURCES["amc23"], sha256=wrong))
    with pytest.raises(ChecksumError) as err:
        fetch("amc23", tmp_path, progress=False)
    assert "amc23.jsonl" in str(err.value) and digest in str(err.value) and wrong in str(err.value)
    assert not (tmp_path / "eval_math").exists() or not any((tmp_path / "eval_math").iterdir())
    assert "amc23" not in read_manifest(tmp_path)


def test_refetch_of_a_pinned_url_must_match_the_manifest(amc, tmp_path):
    server, digest = amc
    fetch("amc23", tmp_path, progress=False)
    changed = AMC.replace(b"What", b"WHAT")
    server.files["/amc23/test.jsonl"] = changed
    with pytest.raises(ChecksumError, match=re.escape(hashlib.sha256(changed).hexdigest())):
        fetch("amc23", tmp_path, overwrite=True, progress=False)
    assert (tmp_path / "eval_math/amc23.jsonl").read_bytes() == AMC  # the old file is kept
    assert read_manifest(tmp_path)["amc23"]["sha256"] == digest


def test_a_file_that_differs_from_the_manifest_is_stale_and_not_silently_kept(amc, tmp_path):
    fetch("amc23", tmp_path, progress=False)
    (tmp_path / "eval_math/amc23.jsonl").write_bytes(AMC[:-10])
    with pytest.raises(FetchError, match="is stale.*archer data fetch amc23 overwrite=true"):
        fetch("amc23", tmp_path, progress=False)


def test_unreachable_host_fails_fast_and_writes_nothing(monkeypatch, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on it now
    monkeypatch.setitem(SOURCES, "amc23", dataclasses.replace(
        SOURCES["amc23"], url=f"http://127.0.0.1:{port}/x.jsonl"))
    with pytest.raises(FetchError, match=f"cannot reach 127.0.0.1:{port}.*offline"):
        fetch("amc23", tmp_path, timeout=1.0, progress=False)
    assert not any(tmp_path.iterdir())


def test_unknown_name_is_refused_with_did_you_mean(tmp_path, capsys):
    with pytest.raises(FetchError, match=r"unknown data set 'aime204' \(did you mean 'aime2024'"):
        fetch("aime204", tmp_path)
    assert _cli(["data", "fetch", "math_trian", f"data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'math_train'" in err and "leetcode_train" in err
    assert _cli(["data", "fetch", f"data_dir={tmp_path}"]) == 2  # no name, no --all
    assert "--all" in capsys.readouterr().err


def test_dry_run_all_lists_every_file_without_network(monkeypatch, tmp_path, capsys):
    _no_network(monkeypatch)
    assert _cli(["data", "fetch", "--all", "--dry-run", f"data_dir={tmp_path}"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == list(SOURCES)
    for name, relpath, origin in rows:
        assert relpath == SOURCES[name].relpath and origin == SOURCES[name].origin
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- hub sources


LCB_STDIN = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]


def _official_lcb(qid: str, date: str, platform: str, func_name: str | None = None) -> dict:
    tests = ([{"input": "[1, 2]", "output": "3", "testtype": "functional"}] if func_name
             else LCB_STDIN)
    private = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests * 3)))).decode()
    return {"question_title": qid, "question_content": f"Problem {qid}", "platform": platform,
            "question_id": qid, "contest_id": qid.split("_")[0], "contest_date": date,
            "starter_code": "class Solution:\n    def add(self, a, b):" if func_name else "",
            "difficulty": "easy", "public_test_cases": json.dumps(tests),
            "private_test_cases": private,
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


def _serve_lcb(server, monkeypatch, files: dict[str, list[dict]]) -> str:
    """Serve LiveCodeBench's hub files locally; returns the files' URL prefix."""
    prefix = "/datasets/livecodebench/code_generation_lite/resolve/main/"
    for file, rows in files.items():
        server.files[prefix + file] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    monkeypatch.setitem(SOURCES, "lcb_v5_public", dataclasses.replace(
        SOURCES["lcb_v5_public"], hub_url=server.url))
    return prefix


def test_lcb_v5_public_is_converted_so_the_benchmark_loads_without_a_data_file(
        server, monkeypatch, tmp_path):
    from evals.registry import LCB_PUBLIC_LABEL, load_problems, make_contract

    _serve_lcb(server, monkeypatch, {
        "test4.jsonl": [_official_lcb("abc001_a", "2024-07-30T00:00:00", "atcoder"),  # before
                        _official_lcb("abc370_b", "2024-09-07T00:00:00", "atcoder")],
        "test5.jsonl": [_official_lcb("3300", "2025-01-04T00:00:00", "leetcode", "add"),
                        _official_lcb("abc390_a", "2025-02-01T00:00:00", "atcoder")]})  # end
    path = fetch("lcb_v5_public", tmp_path, progress=False)
    assert path == tmp_path / "eval_code/lcb_v5_public.jsonl"
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["question_id"] for r in written] == ["abc370_b", "3300"]
    assert all("private_test_cases" not in r for r in written)
    assert not (tmp_path / fetch_mod.DOWNLOADS).exists()  # the raw downloads are removed
    problems = load_problems("lcb_v5", data_dir=tmp_path)
    assert [p.problem_id for p in problems] == ["abc370_b", "3300"]
    assert problems[0].gold["public_test_cases"] == LCB_STDIN  # public tests only
    assert problems[1].gold["metadata"] == {"func_name": "add"}
    contract = make_contract("lcb_v5", data_dir=tmp_path)
    assert contract.label == LCB_PUBLIC_LABEL and contract.n_problems == 2


def test_stopped_hub_file_download_resumes_and_keeps_the_finished_files(
        server, monkeypatch, tmp_path):
    prefix = _serve_lcb(server, monkeypatch, {
        "test4.jsonl": [_official_lcb("abc370_b", "2024-09-07T00:00:00", "atcoder")],
        "test5.jsonl": [_official_lcb(f"abc38{i}_a", "2024-12-0{i}T00:00:00", "atcoder")
                        for i in range(1, 6)]})
    server.drop[prefix + "test5.jsonl"] = 700
    with pytest.raises(FetchError, match="test5.jsonl stopped"):
        fetch("lcb_v5_public", tmp_path, retries=0, progress=False)
    assert not (tmp_path / "eval_code/lcb_v5_public.jsonl").exists()
    path = fetch("lcb_v5_public", tmp_path, retries=0, progress=False)
    assert server.requests == [(prefix + "test4.jsonl", None), (prefix + "test5.jsonl", None),
                               (prefix + "test5.jsonl", "bytes=700-")]
    assert len(path.read_text().splitlines()) == 6


def test_hub_source_with_a_json_relpath_is_written_as_a_json_array(monkeypatch, tmp_path):
    monkeypatch.setitem(SOURCES, "math500", Source(
        "eval_math/math500.json", "some/hub-id", convert=lambda r: {"problem": r["q"],
                                                                    "answer": r["a"]}))
    monkeypatch.setattr(fetch_mod, "check_online", lambda *a, **k: None)
    monkeypatch.setattr(fetch_mod, "_hub_rows",
                        lambda src: iter([{"q": "1+1?", "a": "2"}, {"q": "2+2?", "a": "4"}]))
    path = fetch("math500", tmp_path, progress=False)
    assert json.loads(path.read_text()) == [{"problem": "1+1?", "answer": "2"},
                                            {"problem": "2+2?", "answer": "4"}]
    assert [r["answer"] for r in load_dataset("math500", data_dir=tmp_path)] == ["2", "4"]


# ---------------------------------------------------------------- list


def test_list_shows_present_missing_and_stale(amc, tmp_path, capsys):
    fetch("amc23", tmp_path, progress=False)
    legacy = tmp_path / "eval_math/math500.jsonl"  # what older fetches wrote for math500
    legacy.write_text('{"problem": "x", "answer": "1"}\n')
    gsm = tmp_path / "eval_math/gsm8k_test.jsonl"
    gsm.write_text('{"question": "q", "answer": "#### 1"}\n')  # placed by hand
    assert _cli(["data", "list", f"data_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = {r[0]: r for r in (line.split("\t") for line in out.splitlines()[1:])}
    assert set(rows) == set(SOURCES) | set(NOT_FETCHABLE)
    assert rows["amc23"][1:4] == ["present", str(tmp_path / "eval_math/amc23.jsonl"),
                                  str(len(AMC))]
    assert rows["math500"][1:3] == ["stale", str(legacy)] and "math500.json" in rows["math500"][4]
    assert rows["gsm8k_test"][1] == "present" and "not in the manifest" in rows["gsm8k_test"][4]
    assert rows["aime2024"][1:] == ["missing", str(tmp_path / "eval_math/aime2024.jsonl"), "-"]
    (tmp_path / "eval_math/amc23.jsonl").write_bytes(AMC + b"\n")  # changed since the fetch
    assert _cli(["data", "list", f"data_dir={tmp_path}"]) == 0
    amc_row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("amc23")]
    assert amc_row[0].split("\t")[1] == "stale" and "differs from the manifest" in amc_row[0]
    assert (tmp_path / MANIFEST_NAME).is_file()


# ---------------------------------------------------------------- default data dir


def test_default_data_dir_is_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCHER_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == user_data_dir() == tmp_path / "xdg/archer/data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home/.cache/archer/data"
    # nothing fetched yet: the error says where it looked and how to fetch it
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("aime_1983_2023")
    msg = str(err.value)
    assert str(tmp_path / "home/.cache/archer/data/train_math/aime_1983_2023.json") in msg
    assert "`archer data fetch aime_1983_2023`" in msg and "ARCHER_DATA_DIR" in msg


def test_benchmark_without_its_file_names_the_fetch_command(tmp_path):
    from evals.registry import make_contract

    with pytest.raises(FileNotFoundError, match=r"benchmark lcb_v5: .*lcb_v5_public.jsonl.*"
                                                r"`archer data fetch lcb_v5_public`"):
        make_contract("lcb_v5", data_dir=tmp_path)
