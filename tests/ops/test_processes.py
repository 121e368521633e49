"""``serve --processes N``, SIGTERM under load and reload, on real ``dispatcher`` processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_cli import CLEAN_ENV, DISPATCHER, ROOT, free_port, wait_for_port

TOKEN: Final = "processes-test-token-0123456789"
CONFIG: Final = '[workers.dotdo-development]\ngateway = { app = "tests.workers:process" }\n'


def get(
    port: int, host: str, path: str, *, method: str = "GET", token: str | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host, "Connection": "close"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body.decode()
    finally:
        connection.close()


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int, admin_port: int) -> None:
        self.process, self.port, self.admin_port = process, port, admin_port

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=40)
        return self.process.returncode, stderr


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str, config: str = CONFIG) -> Served:
        (tmp_path / "dispatcher.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["DISPATCHER_ADMIN_TOKEN"] = TOKEN
        port, admin_port = free_port(), free_port()
        process = subprocess.Popen(
            [str(DISPATCHER), "serve", "--config", "dispatcher.toml", "--port", str(port),
             "--admin-port", str(admin_port), "--no-access-log", *flags],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        wait_for_port(process, admin_port, within=20)
        wait_for_port(process, port, within=20)
        return Served(process, port, admin_port)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(predicate: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def served_by(port: int, count: int) -> Counter[int]:
    """``count`` requests, each on a new connection, by the pid that answered."""
    pids: Counter[int] = Counter()
    for _ in range(count):
        status, body = get(port, "gateway.do", "/")
        assert status == 200
        pids[body["pid"]] += 1
    return pids


def scraped_total(admin_port: int) -> float:
    status, text = get(admin_port, "127.0.0.1", "/metrics")
    assert status == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dispatcher_requests_total"
    )


def test_two_processes_share_the_work_and_the_metrics(serve: Any) -> None:
    served: Served = serve("--processes", "2")
    wait_for(lambda: len(served.children()) == 2)
    # Both listening: until the second has bound the port, the first takes every connection.
    warmup = 0

    def both_answer() -> bool:
        nonlocal warmup
        warmup += 10
        return len(served_by(served.port, 10)) == 2

    wait_for(both_answer)
    pids = served_by(served.port, 400)
    assert set(pids) <= set(served.children()) and len(pids) == 2
    assert max(pids.values()) <= 0.6 * 400, pids
    wait_for(lambda: scraped_total(served.admin_port) == warmup + 400)
    status, _ = get(served.admin_port, "127.0.0.1", "/ready")
    assert status == 200
    code, stderr = served.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_a_killed_process_is_replaced_while_the_other_serves(serve: Any) -> None:
    served: Served = serve("--processes", "2")
    wait_for(lambda: len(served.children()) == 2)
    served_by(served.port, 20)
    wait_for(lambda: scraped_total(served.admin_port) == 20)
    victim, survivor = served.children()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: is_reaped(victim))
    # A connection the kernel had queued on the dead process's socket as it died is reset
    # (SO_REUSEPORT: each process has its own queue); once that settles, the other process
    # serves every request while the replacement starts.
    wait_for(lambda: all(answers(served.port) for _ in range(5)))
    assert set(served_by(served.port, 20)) <= {survivor} | set(served.children())
    wait_for(lambda: len(served.children()) == 2 and victim not in served.children())
    replacement = (set(served.children()) - {survivor}).pop()
    wait_for(lambda: replacement in served_by(served.port, 20))
    # The dead process's counters are kept: the group's total never goes back.
    assert scraped_total(served.admin_port) >= 40
    code, stderr = served.stop()
    assert code == 0
    assert f"serving process {victim} exited (signal 9)" in stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_during_load_fails_no_accepted_request(serve: Any, processes: str) -> None:
    served: Served = serve("--processes", processes)
    if processes == "2":
        wait_for(lambda: len(served.children()) == 2)
    results: list[int | str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client() -> None:
        while not stop_sending.is_set():
            try:
                status, _ = get(served.port, "gateway.do", "/?sleep=0.3")
            except ConnectionRefusedError:
                return  # not accepted: the listener had closed
            except OSError as exc:
                with lock:
                    results.append(repr(exc))
                return
            with lock:
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(results) >= 16)
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    stop_sending.set()
    for thread in threads:
        thread.join(timeout=30)
    _, stderr = served.process.communicate(timeout=40)
    assert served.process.returncode == 0, stderr
    failed = [r for r in results if r != 200]
    assert failed == [], failed
    assert len(results) >= 16


def test_sighup_reloads_the_routes_and_a_bad_file_keeps_the_old_ones(
    serve: Any, tmp_path: Path
) -> None:
    served: Served = serve()
    assert get(served.port, "newsvc.do", "/")[0] == 404
    config = tmp_path / "dispatcher.toml"
    config.write_text(
        '[routing]\nservices = ["gateway", "db", "newsvc"]\n' + CONFIG
        + 'newsvc = { app = "tests.workers:identity" }\n'
    )  # fmt: skip
    served.process.send_signal(signal.SIGHUP)
    wait_for(lambda: get(served.port, "newsvc.do", "/")[0] == 200)
    assert get(served.port, "gateway.do", "/")[0] == 200

    config.write_text("[routing\nbroken")
    # The signal's reload fails before its first await; the API call after it is answered
    # later, so by then the refusal is logged.
    served.process.send_signal(signal.SIGHUP)
    status, body = get(served.admin_port, "127.0.0.1", "/reload", method="POST", token=TOKEN)
    assert status == 422
    assert "configuration not reloaded" in body["message"]
    assert get(served.port, "newsvc.do", "/")[0] == 200  # the old configuration serves on
    code, stderr = served.stop()
    assert code == 0
    assert "reload refused; the running configuration keeps serving" in stderr


def test_reload_in_a_group_reaches_every_process(serve: Any, tmp_path: Path) -> None:
    served: Served = serve("--processes", "2")
    wait_for(lambda: len(served.children()) == 2)
    (tmp_path / "dispatcher.toml").write_text(
        '[routing]\nservices = ["gateway", "db", "newsvc"]\n' + CONFIG
        + 'newsvc = { app = "tests.workers:process" }\n'
    )  # fmt: skip
    status, body = get(served.admin_port, "127.0.0.1", "/reload", method="POST", token=TOKEN)
    assert status == 200, body
    assert body["routes"] >= 3
    children = set(served.children())
    try:
        wait_for(lambda: {p for p in served_by_host(served.port, "newsvc.do", 60)} == children)
    finally:
        code, stderr = served.stop()
        print(stderr)
    assert code == 0


def answers(port: int) -> bool:
    try:
        return get(port, "gateway.do", "/")[0] == 200
    except ConnectionError:
        return False


def is_reaped(pid: int) -> bool:
    """Waited for by its parent, so its sockets are closed. A zombie is not enough: a
    SIGKILLed process's main thread turns zombie while its other threads are still exiting,
    and they hold its file descriptors (its listening socket, still taking connections that
    are reset when the last thread goes). Its parent is told only once every thread is gone."""
    return not Path(f"/proc/{pid}").exists()


def served_by_host(port: int, host: str, count: int) -> set[int]:
    pids = set()
    for _ in range(count):
        status, body = get(port, host, "/")
        if status == 200:
            pids.add(body["pid"])
    return pids
