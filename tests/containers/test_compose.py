"""End-to-end test of the container setup with real Docker engines.

Validates every Compose file, builds the images FROM the local Debian base with
docker-compose.ci.yml, runs a tiny experiment with two worker containers on the B3DB data,
and checks the database, optuna-dashboard and TensorBoard. The engines come from the
docker-sandbox tool: a build engine on the host network and a run engine in a private
network namespace. The test stops both at the end.

Skips when docker-sandbox or docker-compose is missing, except under CI=true, where it
fails instead. Run it with scripts/ci-containers.sh or `pytest -m containers`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX = Path(os.environ.get("DOCKER_SANDBOX", REPO_ROOT.parent / "shared" / "tools" / "docker-sandbox"))
# The folder docker-sandbox keeps its sockets and pid files in, by its own default.
SANDBOX_DIR = Path(os.environ.get("DOCKER_SANDBOX_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "docker-sandbox"))
# Through bash, because a copied tools folder may have lost the executable bit.
SANDBOX_COMMAND = ["bash", str(SANDBOX)]
BUILD_ENGINE = f"unix://{SANDBOX_DIR}/build.sock"
RUN_ENGINE = f"unix://{SANDBOX_DIR}/run.sock"

BASE_FILE = "docker-compose.yml"
CI_FILES = ["-f", BASE_FILE, "-f", "docker-compose.ci.yml"]
PROJECT = "hpo-ci"
APP_IMAGE = "smiles-hpo:ci"
POSTGRES_IMAGE = "local/hpo-postgres:ci"

# A budget small enough for two CPU cores: two trials per worker of one epoch each.
EXPERIMENT = "ci"
FOLDS = 2
TRIALS_PER_FOLD = 2
WORKERS = 2
FINISHED_STATES = ("COMPLETE", "PRUNED")

BUILD_TIMEOUT_S = 1800
WORKERS_TIMEOUT_S = 600
HTTP_TIMEOUT_S = 90

COMPOSE_FILE_SETS = [
    [BASE_FILE],
    [BASE_FILE, "docker-compose.gpu.yml"],
    [BASE_FILE, "docker-compose.ci.yml"],
    ["docker-compose.worker.yml"],
    ["docker-compose.worker.yml", "docker-compose.gpu.yml"],
]


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip with the reason, or fail under CI, where the test must run."""
    if condition:
        return
    if running_in_ci():
        pytest.fail(f"CI=true, but the container test cannot run: {reason}")
    pytest.skip(reason)


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
        check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"command failed with exit code {result.returncode}: {' '.join(command)}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@dataclass
class Compose:
    """docker-compose with the test's settings, isolated from a developer's .env file."""

    env: dict[str, str]
    env_file: Path

    def config(self, files: list[str], *, check: bool = True, **overrides: str) -> subprocess.CompletedProcess[str]:
        flags = [part for name in files for part in ("-f", name)]
        return run(["docker-compose", "--env-file", str(self.env_file), *flags, "config"],
                   env=dict(self.env, **overrides), check=check, timeout=60)

    def __call__(self, engine: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a docker-compose command with the CI files on one engine."""
        command = ["docker-compose", "--env-file", str(self.env_file), *CI_FILES, *args]
        return run(command, env=dict(self.env, DOCKER_HOST=engine), **kwargs)


def sandbox_unavailable_reason() -> str | None:
    if not SANDBOX.is_file():
        return f"docker-sandbox not found at {SANDBOX}; set DOCKER_SANDBOX to its path"
    if os.geteuid() != 0:
        return "docker-sandbox must run as root"
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    if shutil.which("docker-compose") is None and sandbox_unavailable_reason() is None:
        # A new machine has no docker-compose until docker-sandbox installs it.
        run([*SANDBOX_COMMAND, "install"], timeout=1200)
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed")
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    env = dict(os.environ)
    env.update(
        COMPOSE_PROJECT_NAME=PROJECT,
        POSTGRES_PASSWORD=secrets.token_hex(16),
        HPO_IMAGE=APP_IMAGE,
        HPO_EXPERIMENT=EXPERIMENT,
        HPO_DATASET="b3db",
        HPO_FOLDS=str(FOLDS),
        HPO_TRIALS_PER_FOLD=str(TRIALS_PER_FOLD),
        HPO_MAX_EPOCHS="1",
        HPO_PATIENCE="1",
        # One thread per worker, so two workers do not overload two cores.
        HPO_THREADS="1",
        HPO_SEARCH_SPACE="/config/tiny-space.toml",
        HPO_DEVICE="cpu",
        # Only docker-compose.worker.yml reads it, and no container connects to this host.
        HPO_STORAGE="postgresql+psycopg2://hpo:unused@head-node.invalid:5432/hpo",
    )
    return Compose(env, env_file)


@pytest.mark.parametrize("files", COMPOSE_FILE_SETS, ids=lambda files: "+".join(files))
def test_compose_file_valid(compose: Compose, files: list[str]) -> None:
    result = compose.config(files, check=False)
    assert result.returncode == 0, f"docker-compose config rejected {files}:\n{result.stderr}"
    assert "worker:" in result.stdout


def test_compose_gpu_overlay_reserves_gpus(compose: Compose) -> None:
    result = compose.config([BASE_FILE, "docker-compose.gpu.yml"])
    assert "driver: nvidia" in result.stdout, "the GPU overlay must reserve NVIDIA devices"
    assert "count: all" in result.stdout


def test_compose_requires_password(compose: Compose) -> None:
    result = compose.config([BASE_FILE], check=False, POSTGRES_PASSWORD="")
    assert result.returncode != 0, "config must fail without POSTGRES_PASSWORD"
    assert "POSTGRES_PASSWORD" in result.stderr


@pytest.fixture(scope="module")
def engines(compose: Compose) -> Iterator[None]:
    """Start the sandbox's build and run engines, and stop both afterwards."""
    reason = sandbox_unavailable_reason()
    require(reason is None, reason or "")
    try:
        for step in ("install", "start", "base"):
            run([*SANDBOX_COMMAND, step], timeout=1200)
        yield
    finally:
        run([*SANDBOX_COMMAND, "stop"], timeout=300, check=False)


@pytest.fixture(scope="module")
def images(engines: None, compose: Compose) -> None:
    """Build the two images on the build engine and copy them to the run engine."""
    extras = REPO_ROOT / "docker" / "build-extras"
    added = set()
    try:
        before = set(extras.iterdir())
        run([*SANDBOX_COMMAND, "wheels", str(extras)])
        run([*SANDBOX_COMMAND, "certs", str(extras)])
        added = set(extras.iterdir()) - before
        # The other services share the coordinator's image.
        compose(BUILD_ENGINE, "build", "postgres", "coordinator", timeout=BUILD_TIMEOUT_S)
    finally:
        # Removed again, so that the wheel and the certificates never land in a commit.
        for path in added:
            path.unlink()
    run([*SANDBOX_COMMAND, "ship", APP_IMAGE, POSTGRES_IMAGE], timeout=BUILD_TIMEOUT_S)


@dataclass
class ContainerState:
    name: str
    hostname: str
    status: str
    exit_code: int
    restarts: int


def inspect_containers(compose: Compose, service: str) -> list[ContainerState]:
    ids = compose(RUN_ENGINE, "ps", "-a", "-q", service).stdout.split()
    if not ids:
        return []
    result = run(
        ["docker", "inspect", "--format", "{{json .}}", *ids], env=dict(compose.env, DOCKER_HOST=RUN_ENGINE),
    )
    states = []
    for line in result.stdout.splitlines():
        info = json.loads(line)
        states.append(ContainerState(
            name=info["Name"].lstrip("/"),
            hostname=info["Config"]["Hostname"],
            status=info["State"]["Status"],
            exit_code=info["State"]["ExitCode"],
            restarts=info["RestartCount"],
        ))
    return states


def service_logs(compose: Compose, service: str) -> str:
    return compose(RUN_ENGINE, "logs", "--no-color", "--tail", "60", service, check=False).stdout


@dataclass
class Stack:
    compose: Compose
    workers: list[ContainerState]
    seconds_to_budget: float


@pytest.fixture(scope="module")
def stack(images: None, compose: Compose) -> Iterator[Stack]:
    """Start every service with two workers, wait until the workers exit, then remove all."""
    # Volumes left by an interrupted run would keep that run's database password.
    compose(RUN_ENGINE, "down", "--volumes", "--remove-orphans", check=False, timeout=300)
    started = time.monotonic()
    try:
        # `up` returns after the coordinator has exited successfully and the workers started.
        compose(RUN_ENGINE, "up", "-d", "--no-build", "--scale", f"worker={WORKERS}", timeout=600)
        deadline = started + WORKERS_TIMEOUT_S
        while True:
            workers = inspect_containers(compose, "worker")
            if workers and all(worker.status == "exited" for worker in workers):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the workers did not finish within {WORKERS_TIMEOUT_S} s: "
                    f"{[(worker.name, worker.status) for worker in workers]}\n{service_logs(compose, 'worker')}"
                )
            time.sleep(3)
        yield Stack(compose, workers, time.monotonic() - started)
    finally:
        compose(RUN_ENGINE, "down", "--volumes", "--remove-orphans", "--timeout", "10",
                check=False, timeout=300)


def test_coordinator_exits_zero(stack: Stack) -> None:
    (coordinator,) = inspect_containers(stack.compose, "coordinator")
    assert coordinator.exit_code == 0, (
        f"coordinator exited with {coordinator.exit_code}:\n{service_logs(stack.compose, 'coordinator')}"
    )


def test_workers_exit_zero(stack: Stack) -> None:
    print(f"experiment finished {stack.seconds_to_budget:.0f} s after `up`")
    assert len(stack.workers) == WORKERS
    for worker in stack.workers:
        assert worker.exit_code == 0, (
            f"{worker.name} exited with {worker.exit_code}:\n{service_logs(stack.compose, 'worker')}"
        )
        assert worker.restarts == 0, f"{worker.name} was restarted {worker.restarts} times"


def query_trials(compose: Compose) -> list[tuple[str, str, str]]:
    """Return (study name, trial state, trial hostname) for every trial in the database."""
    sql = (
        "SELECT s.study_name, t.state, COALESCE(a.value_json, 'null') FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'hostname' "
        "ORDER BY t.trial_id"
    )
    result = compose(RUN_ENGINE, "exec", "-T", "postgres",
                     "psql", "-U", "hpo", "-d", "hpo", "-A", "-t", "-F", "\t", "-c", sql)
    rows = []
    for line in result.stdout.splitlines():
        study, state, hostname = line.split("\t")
        rows.append((study, state, json.loads(hostname) or ""))
    return rows


def test_folds_reach_budget_from_both_workers(stack: Stack) -> None:
    rows = query_trials(stack.compose)
    finished = Counter(study for study, state, _ in rows if state in FINISHED_STATES)
    hosts_by_study: dict[str, Counter[str]] = defaultdict(Counter)
    for study, state, hostname in rows:
        if state in FINISHED_STATES:
            hosts_by_study[study][hostname] += 1
    print(f"finished trials per fold and worker container: { {s: dict(c) for s, c in hosts_by_study.items()} }")

    for fold in range(FOLDS):
        study = f"{EXPERIMENT}-fold{fold}"
        assert finished[study] >= TRIALS_PER_FOLD, (
            f"{study} has {finished[study]} finished trials, expected {TRIALS_PER_FOLD}; trials: {rows}"
        )
    worker_hosts = {worker.hostname for worker in stack.workers}
    trial_hosts = {hostname for _, state, hostname in rows if state in FINISHED_STATES}
    assert trial_hosts == worker_hosts, (
        f"finished trials came from containers {sorted(trial_hosts)}, "
        f"expected both worker containers {sorted(worker_hosts)}"
    )


def http_get(url: str) -> tuple[int, str]:
    """GET a URL inside the run engine's network namespace, where its ports are published."""
    script = (
        "import sys, urllib.request\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "with opener.open(sys.argv[1], timeout=10) as response:\n"
        "    print(response.status)\n"
        "    sys.stdout.write(response.read().decode())\n"
    )
    engine_pid = (SANDBOX_DIR / "run.pid").read_text().strip()
    result = subprocess.run(
        ["nsenter", "-t", engine_pid, "-n", sys.executable, "-c", script, url],
        capture_output=True, text=True, timeout=30,
    )
    if result.returncode != 0:
        return 0, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def wait_for_http(url: str) -> tuple[int, str]:
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while True:
        status, body = http_get(url)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(2)


def test_dashboard_lists_studies(stack: Stack) -> None:
    status, body = wait_for_http("http://127.0.0.1:8080/api/studies")
    assert status == 200, f"optuna-dashboard answered {status} {body!r}\n{service_logs(stack.compose, 'dashboard')}"
    names = sorted(study["study_name"] for study in json.loads(body)["study_summaries"])
    assert names == [f"{EXPERIMENT}-fold{fold}" for fold in range(FOLDS)]

    status, _ = http_get("http://127.0.0.1:8080/")
    assert status == 200, "optuna-dashboard's start page must answer 200"


def test_tensorboard_shows_trial_logs(stack: Stack) -> None:
    status, body = wait_for_http("http://127.0.0.1:6006/data/runs")
    assert status == 200, f"TensorBoard answered {status} {body!r}\n{service_logs(stack.compose, 'tensorboard')}"
    runs = json.loads(body)
    assert any(run.startswith(f"{EXPERIMENT}-fold") for run in runs), (
        f"TensorBoard lists no trial runs of the workers' log volume: {runs}"
    )


def test_coordinator_rerun_is_idempotent(stack: Stack) -> None:
    result = stack.compose(RUN_ENGINE, "run", "--rm", "--no-deps", "coordinator", check=False, timeout=300)
    assert result.returncode == 0, f"a second `create` failed:\n{result.stdout}\n{result.stderr}"
    assert "already exists with the same settings" in result.stdout


def test_report_command_in_image(stack: Stack) -> None:
    result = stack.compose(RUN_ENGINE, "run", "--rm", "--no-deps", "coordinator",
                     "hpo-coordinator", "report", "--output", "/tmp/report.json", check=False, timeout=300)
    assert result.returncode == 0, f"hpo-coordinator report failed:\n{result.stdout}\n{result.stderr}"
    for fold in range(FOLDS):
        assert f"{EXPERIMENT}-fold{fold}" in result.stdout or f"fold {fold}" in result.stdout.lower(), (
            f"the report names no fold {fold}:\n{result.stdout}"
        )


# Claims a GPU the way a worker does, prints "<gpu> <slot>" and keeps the claim for argv[1] s.
CLAIM_SCRIPT = """
import os, sys, time
from pathlib import Path
from shared.placement import claim_gpu, count_visible_gpus
claim = claim_gpu(Path(os.environ["HPO_GPU_LOCK_DIR"]), count_visible_gpus())
print(claim.index, claim.slot, flush=True)
time.sleep(float(sys.argv[1]))
"""


def wait_for_claim(compose: Compose, container: str) -> str:
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    env = dict(compose.env, DOCKER_HOST=RUN_ENGINE)
    while True:
        logs = run(["docker", "logs", container], env=env, check=False)
        if logs.stdout.strip() or time.monotonic() > deadline:
            return logs.stdout.strip()
        time.sleep(1)


def test_gpu_placement_across_containers(stack: Stack) -> None:
    """Worker containers of one node share the gpu-locks volume, so their claims exclude each other."""
    holders = []
    try:
        for _ in range(2):
            result = stack.compose(RUN_ENGINE, "run", "-d", "--no-deps", "-e", "HPO_PRETEND_GPUS=2",
                                   "worker", "python", "-c", CLAIM_SCRIPT, "300")
            container = result.stdout.strip().splitlines()[-1]
            holders.append(container)
            claim = wait_for_claim(stack.compose, container)
            assert claim, f"container {container} printed no GPU claim"
        claims = [wait_for_claim(stack.compose, container) for container in holders]
        assert claims == ["0 0", "1 0"], f"two containers on two GPUs must get one each: {claims}"

        third = stack.compose(RUN_ENGINE, "run", "--rm", "--no-deps", "-e", "HPO_PRETEND_GPUS=2",
                              "worker", "python", "-c", CLAIM_SCRIPT, "0")
        assert third.stdout.split()[-2:] == ["0", "1"], (
            f"a third container must share GPU 0 as slot 1, but printed {third.stdout!r}"
        )
    finally:
        if holders:
            run(["docker", "rm", "-f", *holders], env=dict(stack.compose.env, DOCKER_HOST=RUN_ENGINE), check=False)
