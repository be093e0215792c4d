"""`minbert tune` against a real PostgreSQL server: two workers share one study through it,
one is killed with SIGKILL mid-trial, and the study still ends with every trial counted
once (the killed trial failed, retried once with its parameters, resumed from its folder).

The server is Debian's `postgresql` package (`.ci/run` installs it where it can), started
here on a free local port in a temporary folder; without it, or without the psycopg
driver, the test is skipped."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from test_tune import study_config, tune_command

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg")


def _postgres_bin() -> str | None:
    """The folder of initdb / pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server installed (Debian: apt install postgresql)")
    root = tmp_path_factory.mktemp("postgres")
    data, port = root / "data", _free_port()
    # the server refuses to run as root: as `nobody` then, in a folder it owns
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if prefix:
        os.chmod(root, 0o777)
        for parent in root.parents:  # nobody must reach the folder
            if str(parent).startswith(("/tmp", str(tmp_path_factory.getbasetemp()))):
                os.chmod(parent, os.stat(parent).st_mode | 0o011)

    def run(*args):
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            pytest.skip(f"PostgreSQL could not start here: {done.stderr.strip()[:300]}")

    run(f"{bin_dir}/initdb", "-D", str(data), "-U", "minbert", "-A", "trust", "--no-sync")
    run(f"{bin_dir}/pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    yield f"postgresql://minbert@127.0.0.1:{port}/postgres"
    subprocess.run([*prefix, f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate",
                    "stop"], capture_output=True, timeout=60)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_a_killed_one_is_retried_once(
        tmp_path, tiny_checkpoint, postgres_url):
    config = study_config(tmp_path, tiny_checkpoint, epochs=3, trials=3)
    # worker A kills itself (SIGKILL) after the second epoch of its first trial
    killer = ("import os, signal, sys; from minbert import training; from minbert.tuning "
              "import Study\n"
              "end = training.Trainer.end_epoch\n"
              "def dying(self):\n"
              "    metrics = end(self)\n"
              "    if self.epoch == 2:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return metrics\n"
              "training.Trainer.end_epoch = dying\n"
              "Study.from_config(sys.argv[1], storage=sys.argv[2]).run()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = subprocess.Popen([sys.executable, "-c", killer, config, postgres_url], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in a.stderr:  # B joins once A holds a trial (so A is killed in one)
        if "(study trial" in line:
            break
    b = subprocess.Popen(tune_command(config, "--storage", postgres_url), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    a_err = a.communicate(timeout=300)[1]
    b_err = b.communicate(timeout=300)[1]
    assert a.returncode == -signal.SIGKILL, a_err
    assert b.returncode == 0, b_err
    # the same command again: the dead worker's trial is failed, queued and finished
    done = subprocess.run(tune_command(config, "--storage", postgres_url),
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="study", storage=postgres_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    assert "RUNNING" not in states and "WAITING" not in states
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    log = (tmp_path / "study" / f"trial-{failed.number:04d}" / "log.jsonl").read_text()
    assert '"type": "resume"' in log and log.count('"type": "start"') == 1
    assert {t.user_attrs["pid"] for t in study.trials} >= {a.pid, b.pid}
    # the study's files never hold the URL's secrets (here none) and name the server
    assert "127.0.0.1" in (tmp_path / "study" / "study.json").read_text()
