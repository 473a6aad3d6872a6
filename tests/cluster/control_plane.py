"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, started from release binaries for the real-cluster test tier.

The binaries come xz-compressed with a SHA256SUMS file (the layout of the project's CI machines);
they are unpacked once into a cache folder and reused while the sums match. Everything else (certs,
tokens, etcd data, logs) lives in a fresh temporary folder per run, and every port is picked free,
so parallel runs never clash. There is no kubelet: `NodeKeeper` plays the part of the nodes'
heartbeats.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES_ENV = "VGPU_K8S_BIN"
REPO = Path(__file__).resolve().parents[2]
# Where the project's CI machines keep the release binaries, beside the repository.
SIBLING_BINARIES = REPO / "../shared/k8s/bin"
ADMIN_USER = "vgpu-test-admin"


class ControlPlaneUnavailable(Exception):
    """What is missing to start a control plane here (the tier skips with this text)."""


@dataclass(frozen=True)
class Binaries:
    """Unpacked, checked binaries and where etcd is."""

    folder: Path
    etcd: Path

    def path(self, name: str) -> Path:
        """The binary `name` (one of BINARIES)."""
        return self.folder / name


def _sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            sums[name.strip()] = digest
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def binaries_source() -> Path | None:
    """``$VGPU_K8S_BIN``, else the sibling folder of the CI machines when it exists, else None."""
    if os.environ.get(BINARIES_ENV):
        return Path(os.environ[BINARIES_ENV])
    return SIBLING_BINARIES.resolve() if SIBLING_BINARIES.is_dir() else None


def cache_root() -> Path:
    """Where unpacked binaries are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vgpu-dra" / "k8s"


def find_binaries(source: Path) -> Binaries:
    """Unpack `source`/<name>.xz (or take `source`/<name> as it is) into the cache, checked against
    `source`/SHA256SUMS where present. Raises ControlPlaneUnavailable naming what is missing."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ControlPlaneUnavailable("etcd is not installed (Debian: apt-get install -y etcd-server)")
    if not source.is_dir():
        raise ControlPlaneUnavailable(f"no Kubernetes binaries at {source}")
    sums_file = source / "SHA256SUMS"
    sums = _sums(sums_file) if sums_file.is_file() else {}
    plain = all((source / name).is_file() and os.access(source / name, os.X_OK) for name in BINARIES)
    if plain and not any((source / f"{name}.xz").is_file() for name in BINARIES):
        return Binaries(source, Path(etcd))
    missing = [f"{name}.xz" for name in BINARIES if not (source / f"{name}.xz").is_file()]
    if missing:
        raise ControlPlaneUnavailable(f"{source} lacks {', '.join(missing)}")
    key = hashlib.sha256(repr(sorted(sums.items())).encode()).hexdigest()[:16] if sums else "unchecked"
    folder = cache_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        target = folder / name
        if target.is_file() and (not sums or _sha256(target) == sums.get(name)):
            continue
        partial = folder / f".{name}.{os.getpid()}.part"
        with lzma.open(source / f"{name}.xz") as packed, partial.open("wb") as out:
            shutil.copyfileobj(packed, out, 1 << 20)
        if sums and _sha256(partial) != sums.get(name):
            partial.unlink()
            raise ControlPlaneUnavailable(f"{name} from {source} does not match SHA256SUMS")
        partial.chmod(0o755)
        partial.replace(target)  # atomic: a concurrent run sees the old file or the whole new one
    return Binaries(folder, Path(etcd))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pki:
    """A CA, the API server's serving cert and the service-account key pair, made with openssl."""

    folder: Path

    def create(self) -> Pki:
        """Write the CA, serving cert and SA keys (well under a second with EC keys)."""
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
                 "-subj", "/CN=vgpu-dra-test-ca", cwd=self.folder)
        _openssl("req", "-x509", *ec, "-keyout", "apiserver.key", "-out", "apiserver.crt", "-days", "7",
                 "-CA", "ca.crt", "-CAkey", "ca.key", "-subj", "/CN=kube-apiserver",
                 "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
                 cwd=self.folder)
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=self.folder)
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.folder)
        return self

    def client_cert(self, name: str, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate for `user` in `groups` (how a node proves its identity)."""
        subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "7", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-subj", subject, cwd=self.folder)
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"


def write_kubeconfig(path: Path, server: str, ca: Path, *, token: str | None = None,
                     cert: tuple[Path, Path] | None = None, user: str = "user") -> Path:
    """A kubeconfig for `server` with a bearer token or a client certificate."""
    credentials: dict[str, str] = {}
    if token:
        credentials["token"] = token
    if cert:
        credentials["client-certificate"] = str(cert[0])
        credentials["client-key"] = str(cert[1])
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
           "users": [{"name": user, "user": credentials}],
           "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
           "current-context": "test"}
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


AUDIT_WRITES_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
    resources:
      - group: ""
        resources: [pods, pods/status, pods/binding]
      - group: resource.k8s.io
        resources: [resourceclaims, resourceclaims/status]
  - level: None
"""


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback."""

    binaries: Binaries
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vgpu-k8s-")))
    feature_gates: str = ""
    # Record every write to pods and claims (who, what, the answer's code) in `audit_log`: what a
    # bench round cost the API server, request by request. Off by default (a write to a file each).
    audit_writes: bool = False
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    server: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def admin_kubeconfig(self) -> Path:
        return self.folder / "admin.kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.folder / "pki")

    def log(self, name: str) -> Path:
        """The log file of component `name`."""
        return self.folder / f"{name}.log"

    @property
    def audit_log(self) -> Path:
        """kube-apiserver's audit log (JSON lines), written when `audit_writes` is set."""
        return self.folder / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit_writes:
            return []
        policy = self.folder / "audit-policy.yaml"
        policy.write_text(AUDIT_WRITES_POLICY)
        # Batches of at most a second: a reader waits that long for a round's last writes.
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log),
                "--audit-log-mode", "batch", "--audit-log-batch-max-wait", "1s"]

    def start(self, timeout_s: float = 90.0) -> ControlPlane:
        """Start everything in order and wait until the API server is ready and the scheduler and
        controller-manager answer their health checks."""
        (self.folder / "pki").mkdir(parents=True, exist_ok=True)
        pki = self.pki.create()
        tokens = {self.admin_token: (ADMIN_USER, "system:masters"),
                  secrets.token_hex(16): ("system:kube-controller-manager", ""),
                  secrets.token_hex(16): ("system:kube-scheduler", "")}
        token_file = self.folder / "tokens.csv"
        token_file.write_text("".join(f'{t},{u},{u},"{g}"\n' for t, (u, g) in tokens.items()))
        token_file.chmod(0o600)
        by_user = {u: t for t, (u, _) in tokens.items()}

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self._spawn("etcd", [str(self.binaries.etcd), "--data-dir", str(self.folder / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                             "--quota-backend-bytes", str(1 << 30), "--log-level", "warn"])
        gates = ["--feature-gates", self.feature_gates] if self.feature_gates else []
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn("kube-apiserver", [
            str(self.binaries.path("kube-apiserver")), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--tls-cert-file", str(pki.folder / "apiserver.crt"),
            "--tls-private-key-file", str(pki.folder / "apiserver.key"), "--client-ca-file", str(pki.ca),
            "--service-account-key-file", str(pki.folder / "sa.pub"),
            "--service-account-signing-key-file", str(pki.folder / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16", "--authorization-mode", "RBAC,Node",
            "--token-auth-file", str(token_file), "--runtime-config", "api/all=true",
            "--endpoint-reconciler-type", "none", "--allow-privileged=true", "--enable-priority-and-fairness=false",
            "--max-requests-inflight", "800", "--max-mutating-requests-inflight", "400", *self._audit_flags(),
            *gates])
        write_kubeconfig(self.admin_kubeconfig, self.server, pki.ca, token=self.admin_token, user=ADMIN_USER)
        self._wait_ready(timeout_s)
        for component, user in (("kube-controller-manager", "system:kube-controller-manager"),
                                ("kube-scheduler", "system:kube-scheduler")):
            kubeconfig = write_kubeconfig(self.folder / f"{component}.kubeconfig", self.server, pki.ca,
                                          token=by_user[user], user=user)
            extra = (["--service-account-private-key-file", str(pki.folder / "sa.key"),
                      "--root-ca-file", str(pki.ca), "--use-service-account-credentials=true",
                      "--controllers", "*", "--cluster-signing-cert-file", str(pki.ca),
                      "--cluster-signing-key-file", str(pki.folder / "ca.key"),
                      "--node-monitor-grace-period", "40s"]
                     if component == "kube-controller-manager" else [])
            # The defaults (kcm 20 QPS) throttle the claim-from-template controller at about 10 pods
            # a second, which would hide what the allocators themselves cost; clusters that run
            # many pods raise them the same way.
            extra += ["--kube-api-qps", "200", "--kube-api-burst", "400"]
            self._spawn(component, [str(self.binaries.path(component)), "--kubeconfig", str(kubeconfig),
                                    "--authentication-kubeconfig", str(kubeconfig),
                                    "--authorization-kubeconfig", str(kubeconfig),
                                    "--leader-elect=false", "--bind-address", "127.0.0.1",
                                    "--secure-port", str(free_port()), *extra, *gates])
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log(name).open("ab")
        try:
            self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _wait_ready(self, timeout_s: float) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        request = urllib.request.Request(f"{self.server}/readyz",
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.read().strip() == b"ok":
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready after {timeout_s:.0f}s ({last}):\n{self.tail('kube-apiserver')}")

    def tail(self, name: str, chars: int = 3000) -> str:
        """The end of component `name`'s log."""
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """Stop every component (newest first) and remove the run's folder."""
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not os.environ.get("VGPU_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.folder, ignore_errors=True)
