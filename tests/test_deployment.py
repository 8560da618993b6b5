"""Deployment: TLS certificates, SuperNode keys, and a real Flower deployment on 127.0.0.1.

The end-to-end part starts ``flower-superlink`` with TLS and SuperNode authentication,
registers two SuperNodes' public keys, starts the two SuperNodes (each with its own site
config), runs the fedsynth app with ``flwr run`` and checks the run's metrics; a third
SuperNode whose key was never registered must be refused. Every process it starts is
stopped by process group (and its descendants by PID) when the module finishes, also on
failure. Nothing touches ``~/.flwr``: every Flower process gets its own FLWR_HOME in tmp.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import load_config, load_site_config
from fedsynth.data.dataset import save_npz
from fedsynth.data.phantom import make_phantoms
from fedsynth.deploy import DeployError, load_node_public_key, make_certificates, make_node_keys
from fedsynth.deploy.flower import (
    flower_env,
    free_port,
    run_config,
    superlink_command,
    supernode_command,
    write_flower_connection,
)
from fedsynth.privacy.keys import generate_keypair

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedsynth-test"


# ---- certificates and keys ------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certificates_form_a_valid_chain(tmp_path):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1", "localhost", "superlink.example.org"], days=30)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())

    assert _mode(files.ca_key) == 0o600 and _mode(files.server_key) == 0o600
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert 29 <= (server.not_valid_after_utc - server.not_valid_before_utc).days <= 31
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_certificates_are_never_overwritten(tmp_path):
    files = make_certificates(tmp_path)
    before = {p: p.read_bytes() for p in files.all()}
    with pytest.raises(DeployError, match="refusing to overwrite"):
        make_certificates(tmp_path)
    assert {p: p.read_bytes() for p in files.all()} == before
    files.server_key.unlink()  # one file missing, the others there: still refused, nothing written
    with pytest.raises(DeployError, match="ca.crt"):
        make_certificates(tmp_path)
    assert not files.server_key.exists()
    with pytest.raises(DeployError, match="neither an IP address nor a valid DNS name"):
        make_certificates(tmp_path / "other", ["not a host"])


def test_node_keys_are_what_flower_reads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    files = make_node_keys("site-a", tmp_path)
    assert _mode(files.private_key) == 0o600
    assert files.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert files.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    # flower-supernode loads the private key like this (flwr.supernode.cli.flower_supernode)
    private = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    # `flwr supernode register` loads the public key like this and sends it as PEM
    public_pem = try_load_public_key(files.public_key)
    assert serialization.load_pem_public_key(public_pem).public_numbers() == private.public_key().public_numbers()
    assert load_node_public_key(files.public_key).public_numbers() == private.public_key().public_numbers()
    with pytest.raises(DeployError, match="refusing to overwrite"):
        make_node_keys("site-a", tmp_path)
    with pytest.raises(DeployError, match="site name"):
        make_node_keys("../evil", tmp_path)


def test_deploy_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "certs"
    ok = runner.invoke(app, ["deploy", "certs", "--out", str(out), "--host", "127.0.0.1", "--host", "hub.local"])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    san = x509.load_pem_x509_certificate((out / "server.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hub.local", "localhost"]  # loopback always added
    again = runner.invoke(app, ["deploy", "certs", "--out", str(out)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output and "Traceback" not in again.output

    keys = runner.invoke(app, ["deploy", "node-keys", "--site", "site-a", "--out", str(tmp_path / "k")])
    assert keys.exit_code == 0 and "SHA256:" in keys.output, keys.output
    assert runner.invoke(app, ["deploy", "node-keys", "--site", "site-a", "--out", str(tmp_path / "k")]).exit_code == 2

    home = tmp_path / "flwr-home"
    conn = runner.invoke(app, ["deploy", "connection", "--address", "127.0.0.1:9093", "--root-certificates",
                               str(out / "ca.crt"), "--name", "hub", "--flwr-home", str(home)])
    assert conn.exit_code == 0, conn.output


def test_flower_reads_the_connection(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    files = make_certificates(tmp_path / "certs")
    home = tmp_path / "home"
    write_flower_connection(home, "other", "10.0.0.1:9093", files.ca_cert)
    write_flower_connection(home, CONNECTION, "127.0.0.1:9093", files.ca_cert)
    monkeypatch.setenv("FLWR_HOME", str(home))
    conn = read_superlink_connection(None)  # the default connection
    assert conn.name == CONNECTION and conn.address == "127.0.0.1:9093"
    assert Path(conn.root_certificates) == files.ca_cert.resolve() and not conn.insecure
    assert read_superlink_connection("other").address == "10.0.0.1:9093"


def test_example_deployment_configs_are_valid():
    folder = ROOT / "configs" / "deployment"
    cfg = load_config(folder / "run.yaml")
    assert cfg.federation.site_keys and cfg.federation.num_sites == len(cfg.federation.site_keys)
    for site_file in sorted(folder.glob("site-*.yaml")):
        site = load_site_config(site_file)
        assert site.name == site_file.stem
        # the shipped hospital configs are safe as they are: DP, the gate, a ceiling, no exact statistic
        assert site.unsafe_policy() == [], site.unsafe_policy()
        assert site.policy.require_dp and site.policy.require_gate and site.policy.max_epsilon == 10
        assert not site.policy.allow_alignment_without_dp and site.consortium_keys


def test_a_deployed_site_without_a_policy_gets_the_safe_defaults_and_a_warning(tmp_path):
    minimal = tmp_path / "site.yaml"
    minimal.write_text("name: site-z\ndata_path: x.npz\nstate_dir: state\n")
    site = load_site_config(minimal)
    assert site.policy.require_dp and site.policy.require_gate and site.policy.max_epsilon == 10
    assert site.unsafe_policy() == []
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text("name: site-z\ndata_path: x.npz\nstate_dir: state\npolicy:\n  require_dp: false\n")
    site = load_site_config(relaxed)
    assert site.policy.require_gate, "keys the site does not set keep the deployment defaults"
    assert any("require_dp" in w for w in site.unsafe_policy())
    result = CliRunner().invoke(app, ["deploy", "check-site", str(relaxed)])
    assert result.exit_code == 1 and "require_dp" in result.output
    assert CliRunner().invoke(app, ["deploy", "check-site", str(minimal)]).exit_code == 0


# ---- a real deployment on 127.0.0.1 -----------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (Linux /proc; elsewhere only the process groups are signalled)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _set_child_subreaper(on: bool) -> bool:
    """Linux: adopt orphaned descendants (Flower's detached SuperExecs) so we can reap them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, int(on), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_orphans(known: set[int], owned: set[int]) -> None:
    """waitpid() the dead children adopted as subreaper: the ones we saw, or Flower's own."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            comm, rest = (entry / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            state, ppid = rest.split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        pid = int(entry.name)
        if int(ppid) == os.getpid() and state == "Z" and pid not in owned and \
                (pid in known or comm.startswith(("flower-", "flwr-"))):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


class Processes:
    """Starts processes in their own session; stops them all, children included."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs = logs
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.subreaper = _set_child_subreaper(True)

    def start(self, name: str, cmd: list[str], flwr_home: Path) -> subprocess.Popen:
        flwr_home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=flower_env(flwr_home, self.env), cwd=self.logs, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        pids = set()
        for proc in self.procs.values():
            if proc.poll() is None:
                pids.add(proc.pid)
            pids.update(_descendants(proc.pid))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in [p for p in pids if _alive(p)]:  # never signal a PID that may have been reused
                for kill in (os.killpg, os.kill):  # the group first (our sessions), then the PID itself
                    try:
                        kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                for proc in self.procs.values():
                    proc.poll()  # reap the ones we own
                time.sleep(0.2)
            if not any(_alive(p) for p in pids):
                break
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.subreaper:
            time.sleep(1.0)  # detached SuperExecs notice their parent is gone and exit
            _reap_orphans(pids, {p.pid for p in self.procs.values()})
            _set_child_subreaper(False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait_for_tls(port: int, ca: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flower-superlink exited with code {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the SuperLink did not accept TLS connections on port {port} within {timeout:g} s")


def _flwr(deployment: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["flwr", *args], env=flower_env(deployment["cli_home"], deployment["env"]),
                          cwd=deployment["root"], capture_output=True, text=True, timeout=timeout)


def _json_out(result: subprocess.CompletedProcess) -> dict:
    text = result.stdout
    assert "{" in text, f"no JSON from flwr (rc {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(text[text.index("{"):])


def _logs(deployment: dict, chars: int = 2500) -> str:
    procs = deployment["procs"]
    return "".join(f"\n---- {name} (last {chars} chars) ----\n{procs.log(name)[-chars:]}" for name in procs.procs)


def _nodes(deployment: dict) -> dict[str, str]:
    listing = _json_out(_flwr(deployment, "supernode", "list", CONNECTION, "--format", "json"))
    return {str(n["node-id"]): n["status"] for n in listing["nodes"]}


def _write_site(root: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A hospital: its images (npz of phantoms), its ledger signing keys, its site config."""
    site_dir = root / name
    site_dir.mkdir()
    save_npz(make_phantoms(60, 16, seed=seed), str(site_dir / "images.npz"))
    _, ledger_pub = generate_keypair(name, site_dir / "state")
    site_yaml = site_dir / f"{name}.yaml"
    site_yaml.write_text(yaml.safe_dump({
        "name": name, "data_path": str(site_dir / "images.npz"), "state_dir": str(site_dir / "state"),
        "device": "cpu", "budget": {"epsilon": 30.0, "delta": 1e-5},
        # a test federation on phantoms, without DP: the sites relax the deployment defaults explicitly
        "policy": {"require_dp": False, "require_gate": False, "max_epsilon": None},
    }))
    return site_yaml, ledger_pub


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    logs = root / "logs"
    logs.mkdir()
    env = flower_env(None)
    env["OMP_NUM_THREADS"] = "1"  # two sites and a server share a 2-core machine
    procs = Processes(logs, env)
    try:
        certs = make_certificates(root / "certs", ["127.0.0.1", "localhost"], days=1)
        node_keys = {s: make_node_keys(s, root / "node-keys") for s in ("site-a", "site-b", "site-x")}
        sites = {s: _write_site(root, s, seed) for s, seed in (("site-a", 11), ("site-b", 12), ("site-x", 13))}
        tiny = root / "run.yaml"
        tiny.write_text(yaml.safe_dump({
            "run": {"name": "deploy-test", "output_dir": str(root / "runs"), "device": "cpu"},
            "data": {"resolution": 16},
            "federation": {"num_sites": 2, "site_keys": {s: str(sites[s][1]) for s in ("site-a", "site-b")},
                           "site_timeout_s": 400},
            "generator": {"epochs": 2, "base_channels": 8, "latent_dim": 16, "batch_size": 32},
            "release": {"n_per_class": 24, "min_class_images": 5},
            "classifier": {"epochs": 2},
            "evaluation": {"bootstrap": 20, "grid_images": 4},
        }, sort_keys=False))
        load_config(tiny)  # fail here, not inside the ServerApp, if the test's config is wrong

        port = free_port()
        address = f"127.0.0.1:{port}"
        link = procs.start("superlink", superlink_command(certs, "127.0.0.1", port), root / "home-superlink")
        _wait_for_tls(port, certs.ca_cert, link)
        cli_home = root / "home-cli"
        write_flower_connection(cli_home, CONNECTION, address, certs.ca_cert)
        dep = {"root": root, "env": env, "cli_home": cli_home, "procs": procs, "certs": certs, "address": address,
               "node_keys": node_keys, "sites": sites, "run_config": tiny, "node_ids": {}}

        for site in ("site-a", "site-b"):
            reg = _flwr(dep, "supernode", "register", str(node_keys[site].public_key), CONNECTION, "--format", "json")
            assert reg.returncode == 0, reg.stdout + reg.stderr
            dep["node_ids"][site] = str(_json_out(reg)["node-id"])
        for site in ("site-a", "site-b"):
            cmd = supernode_command(address, certs.ca_cert, node_keys[site].private_key, sites[site][0],
                                    runtime_port=free_port())
            procs.start(site, cmd, root / f"home-{site}")

        deadline = time.monotonic() + 120
        while True:
            status = _nodes(dep)
            if all(status.get(dep["node_ids"][s]) == "online" for s in ("site-a", "site-b")):
                break
            for site in ("site-a", "site-b"):
                assert procs.procs[site].poll() is None, f"{site} exited:\n{procs.log(site)}"
            assert time.monotonic() < deadline, f"SuperNodes not online after 120 s: {status}"
            time.sleep(1)
        yield dep
    finally:
        procs.stop_all()


@pytest.mark.slow
def test_superlink_speaks_only_verified_tls(deployment):
    port = int(deployment["address"].rsplit(":", 1)[1])
    ctx = ssl.create_default_context()  # the system's CAs: our private CA is not among them
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    ctx = ssl.create_default_context(cafile=str(deployment["certs"].ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.slow
def test_unregistered_supernode_is_refused(deployment):
    procs, keys = deployment["procs"], deployment["node_keys"]
    cmd = supernode_command(deployment["address"], deployment["certs"].ca_cert, keys["site-x"].private_key,
                            deployment["sites"]["site-x"][0], runtime_port=free_port())
    intruder = procs.start("site-x", cmd, deployment["root"] / "home-site-x")
    try:
        code = intruder.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a SuperNode with an unregistered key is still running after 120 s:\n" + procs.log("site-x"))
    log = procs.log("site-x")
    # Flower 1.41: activation refused (ApiError 2004) -> Flower exit code 305, process exit status 1
    assert code != 0, log
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log, log
    assert "No SuperNode found with the given public key" in procs.log("superlink")
    # it never became a node of the federation: only the two registered keys are known
    assert set(_nodes(deployment)) == set(deployment["node_ids"].values())


@pytest.mark.slow
def test_flwr_run_over_tls_with_authenticated_supernodes(deployment):
    started = time.monotonic()
    result = _flwr(deployment, "run", str(ROOT), CONNECTION, "--run-config", run_config(deployment["run_config"]),
                   "--stream", timeout=480)
    assert result.returncode == 0, result.stdout + result.stderr + _logs(deployment)
    assert "Successfully started run" in result.stdout, result.stdout

    runs = _json_out(_flwr(deployment, "ls", CONNECTION, "--format", "json"))["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], f"{runs}\n{result.stdout}{_logs(deployment)}"

    found = list((deployment["root"] / "runs").glob("*/metrics.json"))
    assert len(found) == 1, f"no metrics.json after {time.monotonic() - started:.0f} s" + _logs(deployment)
    metrics = json.loads(found[0].read_text())
    assert {name: s["status"] for name, s in metrics["sites"].items()} == {"site-a": "ok", "site-b": "ok"}
    assert 0.0 <= metrics["pooled"]["auroc"] <= 1.0
    # each site kept its own signed ledger; the server copied what it verified
    for site in ("site-a", "site-b"):
        assert (deployment["root"] / site / "state" / "ledger.jsonl").is_file()
        assert (found[0].parent / "ledgers" / f"{site}.jsonl").is_file()
