"""podnet.api.kubeconfig: contexts, clusters, users, relative paths, token files, in-cluster."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
import yaml

from podnet.api.client import Client
from podnet.api.kubeconfig import KubeConfig, KubeConfigError, default_path, from_in_cluster, load_kubeconfig

KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: dev-cluster
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority: certs/ca.crt
- name: prod-cluster
  cluster:
    server: https://prod:443
    certificate-authority-data: {ca_data}
- name: lab
  cluster:
    server: http://127.0.0.1:8080
    insecure-skip-tls-verify: true
users:
- name: dev-user
  user:
    token: dev-token
- name: prod-user
  user:
    tokenFile: /abs/token
contexts:
- name: dev
  context: {{cluster: dev-cluster, user: dev-user, namespace: team-a}}
- name: prod
  context: {{cluster: prod-cluster, user: prod-user}}
- name: lab
  context: {{cluster: lab}}
- name: broken
  context: {{cluster: nowhere, user: dev-user}}
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kube" / "config"
    path.parent.mkdir()
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...").decode()
    path.write_text(KUBECONFIG.format(ca_data=ca))
    return path


def test_current_context(kubeconfig: Path) -> None:
    cfg = load_kubeconfig(kubeconfig)
    assert cfg.server == "https://10.0.0.1:6443"  # trailing slash dropped: paths are appended
    assert cfg.ca_file == str(kubeconfig.parent / "certs" / "ca.crt")  # relative to the file
    assert cfg.token == "dev-token" and cfg.bearer_token() == "dev-token"
    assert cfg.namespace == "team-a"


def test_explicit_context_with_ca_data_and_token_file(kubeconfig: Path) -> None:
    cfg = load_kubeconfig(kubeconfig, context="prod")
    assert cfg.server == "https://prod:443"
    assert cfg.ca_data is not None and cfg.ca_data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert cfg.token_file == "/abs/token" and cfg.token is None
    assert cfg.namespace == "default"


def test_http_cluster_without_user(kubeconfig: Path) -> None:
    cfg = load_kubeconfig(kubeconfig, context="lab")
    assert cfg.insecure_skip_tls_verify and cfg.bearer_token() is None
    assert cfg.ssl_context() is None  # plain http


def test_missing_pieces_are_errors(kubeconfig: Path, tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="context 'nope' not found"):
        load_kubeconfig(kubeconfig, context="nope")
    with pytest.raises(KubeConfigError, match="cluster 'nowhere' not found"):
        load_kubeconfig(kubeconfig, context="broken")
    with pytest.raises(KubeConfigError, match="cannot read"):
        load_kubeconfig(tmp_path / "absent")
    (tmp_path / "list").write_text("[1, 2]")
    with pytest.raises(KubeConfigError, match="not a mapping"):
        load_kubeconfig(tmp_path / "list")
    (tmp_path / "nocontext").write_text(yaml.safe_dump({"clusters": []}))
    with pytest.raises(KubeConfigError, match="no current-context"):
        load_kubeconfig(tmp_path / "nocontext")


def test_json_kubeconfig_is_yaml_too(tmp_path: Path) -> None:
    path = tmp_path / "kc.json"
    path.write_text('{"current-context": "c", "clusters": [{"name": "k", "cluster": {"server": "http://h:1"}}],'
                    ' "contexts": [{"name": "c", "context": {"cluster": "k"}}]}')
    assert load_kubeconfig(path).server == "http://h:1"


def test_default_path_follows_kubeconfig_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", f":{tmp_path / 'first'}:{tmp_path / 'second'}")
    assert default_path() == tmp_path / "first"
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == tmp_path / ".kube" / "config"


def test_token_file_is_reread(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    cfg = KubeConfig(server="https://x", token_file=str(token))
    assert cfg.bearer_token() == "one"
    token.write_text("two")
    assert cfg.bearer_token() == "two"


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("kube-system\n")
    cfg = from_in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                          str(tmp_path))
    assert cfg.server == "https://10.96.0.1:443" and cfg.namespace == "kube-system"
    assert cfg.ca_file == str(tmp_path / "ca.crt") and cfg.bearer_token() == "sa-token"
    v6 = from_in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
                         str(tmp_path / "missing"))
    assert v6.server == "https://[fd00::1]:6443" and v6.namespace == "default"
    with pytest.raises(KubeConfigError, match="not in a cluster"):
        from_in_cluster({}, str(tmp_path))


def test_ssl_context_modes() -> None:
    insecure = KubeConfig(server="https://x", insecure_skip_tls_verify=True).ssl_context()
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    verified = KubeConfig(server="https://x").ssl_context()
    assert verified is not None and verified.verify_mode == ssl.CERT_REQUIRED


def test_client_from_config_takes_namespace_and_token(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("rotating")
    c = Client.from_config(KubeConfig(server="http://127.0.0.1:1", token_file=str(token), namespace="ns1"))
    assert c.default_namespace == "ns1"
    assert c._headers(None)["Authorization"] == "Bearer rotating"
    token.write_text("rotated")
    assert c._headers(None)["Authorization"] == "Bearer rotated"
    c.close()
