"""Real kubectl 1.27, 1.31 and 1.33 against a real podnet-apiserver (HTTPS + token) on a real etcd.

Each kubectl version works in its own namespace on one shared server, with its own --cache-dir, and
every step asserts the text kubectl prints.  1.33 sends protobuf bodies for `create namespace`,
`create configmap` and `auth can-i` (reference finding 0.1); 1.27/1.31 send JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from netns_tests.apiserver_fixtures import ApiServerProcess, kubectl_binary
from podnet.testing.wait import wait_until as wait_for

VERSIONS = (27, 31, 33)

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  containers:
  - name: c
    image: nginx:1.25
    ports: [{{containerPort: 80}}]
"""

RC = """\
apiVersion: v1
kind: ReplicationController
metadata:
  name: rc1
  labels: {{tier: {tier}}}
spec:
  replicas: 1
  selector: {{app: rc1}}
  template:
    metadata: {{labels: {{app: rc1}}}}
    spec:
      containers: [{{name: c, image: busybox}}]
"""


@dataclass
class Kubectl:
    binary: str
    kubeconfig: Path
    cache_dir: Path
    namespace: str
    server: ApiServerProcess
    minor: int

    def run(self, *args: str, stdin: str | None = None, check: bool = True, kubeconfig: Path | None = None,
            namespaced: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, f"--kubeconfig={kubeconfig or self.kubeconfig}", f"--cache-dir={self.cache_dir}"]
        if namespaced:
            argv.append(f"--namespace={self.namespace}")
        proc = subprocess.run([*argv, *args], input=stdin if stdin is not None else "", text=True,
                              capture_output=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
                                 f"\nserver log:\n{self.server.log_tail()}")
        return proc

    def out(self, *args: str, stdin: str | None = None, namespaced: bool = True) -> str:
        return self.run(*args, stdin=stdin, namespaced=namespaced).stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}",
                f"--namespace={self.namespace}", *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)


def rows(text: str) -> list[list[str]]:
    """kubectl's table output as rows of whitespace-separated cells."""
    return [line.split() for line in text.strip().splitlines()]


@contextlib.contextmanager
def background(proc: subprocess.Popen[str]) -> Iterator[list[str]]:
    """Collect a background kubectl's output lines; the process is killed by PID at the end."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(5)


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"kubectl-1.{v}")
def kubectl(request: pytest.FixtureRequest, shared_apiserver: ApiServerProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    """kubectl 1.<minor> with its own cache dir and namespace `kc<minor>` (created here with
    `kubectl create namespace`: a protobuf body from 1.33)."""
    binary = kubectl_binary(request.param)
    if binary is None:
        pytest.skip(f"kubectl 1.{request.param} not installed")
    base = tmp_path_factory.mktemp(f"kubectl-1.{request.param}")
    k = Kubectl(binary, shared_apiserver.kubeconfig(base / "kubeconfig"), base / "cache",
                f"kc{request.param}", shared_apiserver, request.param)
    assert k.out("create", "namespace", k.namespace, namespaced=False) == f"namespace/{k.namespace} created\n"
    return k


def test_version_and_discovery(kubectl: Kubectl) -> None:
    out = json.loads(kubectl.out("version", "-o", "json"))
    assert out["serverVersion"]["major"] == "1"
    assert out["serverVersion"]["minor"] == "31"
    resources = kubectl.out("api-resources", "--no-headers", namespaced=False)
    assert re.search(r"^pods\s+po\s+v1\s+true\s+Pod$", resources, re.M)
    assert re.search(r"^deployments\s+deploy\s+apps/v1\s+true\s+Deployment$", resources, re.M)


def test_create_get_describe_and_output_formats(kubectl: Kubectl) -> None:
    assert kubectl.out("create", "-f", "-", stdin=POD.format(name="web", app="web")) == "pod/web created\n"
    assert kubectl.out("create", "-f", "-", stdin=POD.format(name="db", app="db")) == "pod/db created\n"
    dup = kubectl.run("create", "-f", "-", stdin=POD.format(name="web", app="web"), check=False)
    assert dup.returncode == 1
    assert 'Error from server (AlreadyExists): error when creating "STDIN": pods "web" already exists' \
        in dup.stderr

    table = rows(kubectl.out("get", "pods"))
    assert table[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r[:4] for r in table[1:]] == [["db", "0/1", "Pending", "0"], ["web", "0/1", "Pending", "0"]]
    wide = rows(kubectl.out("get", "pod", "web", "-o", "wide"))
    assert wide[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                       "READINESS", "GATES"]
    assert wide[1][5:] == ["<none>"] * 4
    assert kubectl.out("get", "po", "-o", "name") == "pod/db\npod/web\n"

    as_json = json.loads(kubectl.out("get", "pod", "web", "-o", "json"))
    assert as_json["kind"] == "Pod"
    assert as_json["metadata"]["namespace"] == kubectl.namespace
    assert as_json["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert as_json["metadata"]["uid"] and as_json["metadata"]["resourceVersion"]
    as_yaml = yaml.safe_load(kubectl.out("get", "pod", "web", "-o", "yaml"))
    assert as_yaml["metadata"]["uid"] == as_json["metadata"]["uid"]
    assert as_yaml["spec"]["restartPolicy"] == "Always"  # defaulted as upstream

    described = kubectl.out("describe", "pod", "web")
    assert re.search(r"^Name:\s+web$", described, re.M)
    assert re.search(rf"^Namespace:\s+{kubectl.namespace}$", described, re.M)
    assert re.search(r"^Labels:\s+app=web$", described, re.M)
    assert re.search(r"^Status:\s+Pending$", described, re.M)
    assert re.search(r"^\s+Image:\s+nginx:1.25$", described, re.M)


def test_selectors_all_namespaces_and_chunks(kubectl: Kubectl) -> None:
    app = f"sel{kubectl.namespace}"  # unique across the kubectl versions sharing the server
    for name in ("sel-a", "sel-b", "sel-c"):
        kubectl.out("create", "-f", "-", stdin=POD.format(name=name, app=app))
    selected = rows(kubectl.out("get", "pods", "-l", f"app={app}"))
    assert [r[0] for r in selected[1:]] == ["sel-a", "sel-b", "sel-c"]
    assert kubectl.out("get", "pods", "-l", f"app in ({app}),app!=web", "-o", "name") == \
        "pod/sel-a\npod/sel-b\npod/sel-c\n"
    assert kubectl.out("get", "pods", "-l", "app=nothing").strip() == ""
    assert "No resources found" in kubectl.run("get", "pods", "-l", "app=nothing").stderr

    everywhere = rows(kubectl.out("get", "pods", "-A", "-l", f"app={app}"))
    assert everywhere[0][:2] == ["NAMESPACE", "NAME"]
    assert [r[:2] for r in everywhere[1:]] == [[kubectl.namespace, n] for n in ("sel-a", "sel-b", "sel-c")]
    assert len(rows(kubectl.out("get", "pods", "--all-namespaces"))) > 3

    chunked = kubectl.out("get", "pods", "-l", f"app={app}", "--chunk-size=1", "-o", "name")
    assert chunked == "pod/sel-a\npod/sel-b\npod/sel-c\n"
    namespaces = rows(kubectl.out("get", "ns", "--chunk-size=2", namespaced=False))
    names = [r[0] for r in namespaces[1:]]
    assert {"default", "kube-system", "kube-public", "kube-node-lease", kubectl.namespace} <= set(names)
    assert names == sorted(names)
    wanted = {"default", "kube-system", "kube-public", "kube-node-lease", kubectl.namespace}
    assert all(r[1] == "Active" for r in namespaces[1:] if r[0] in wanted)


def test_apply_label_annotate_patch_scale(kubectl: Kubectl) -> None:
    assert kubectl.out("apply", "-f", "-", stdin=RC.format(tier="a")) == "replicationcontroller/rc1 created\n"
    assert kubectl.out("apply", "-f", "-", stdin=RC.format(tier="a")) == \
        "replicationcontroller/rc1 unchanged\n"
    assert kubectl.out("apply", "-f", "-", stdin=RC.format(tier="b")) == \
        "replicationcontroller/rc1 configured\n"
    assert kubectl.out("get", "rc", "rc1", "-o", "jsonpath={.metadata.labels.tier}") == "b"

    assert kubectl.out("scale", "rc", "rc1", "--replicas=3") == "replicationcontroller/rc1 scaled\n"
    rc_rows = rows(kubectl.out("get", "rc"))
    assert rc_rows[0] == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert rc_rows[1][:2] == ["rc1", "3"]

    kubectl.out("create", "-f", "-", stdin=POD.format(name="edit", app="edit"))
    assert kubectl.out("label", "pod", "edit", "tier=fe") == "pod/edit labeled\n"
    # kubectl 1.27 itself prints "annotate" (its annotate command's past tense was fixed in 1.28)
    verb = "annotate" if kubectl.minor == 27 else "annotated"
    assert kubectl.out("annotate", "pod", "edit", "note=hello") == f"pod/edit {verb}\n"
    assert kubectl.out("patch", "pod", "edit", "--type=merge", "-p",
                       '{"metadata":{"labels":{"m":"1"}}}') == "pod/edit patched\n"
    assert kubectl.out("patch", "pod", "edit", "--type=json", "-p",
                       '[{"op":"add","path":"/metadata/labels/j","value":"2"}]') == "pod/edit patched\n"
    assert kubectl.out("patch", "pod", "edit", "-p",  # strategic: containers merge by name
                       '{"spec":{"containers":[{"name":"c","image":"nginx:1.26"}]}}') == "pod/edit patched\n"
    pod = json.loads(kubectl.out("get", "pod", "edit", "-o", "json"))
    assert pod["metadata"]["labels"] == {"app": "edit", "tier": "fe", "m": "1", "j": "2"}
    assert pod["metadata"]["annotations"]["note"] == "hello"
    assert [(c["name"], c["image"], c["ports"]) for c in pod["spec"]["containers"]] == \
        [("c", "nginx:1.26", [{"containerPort": 80, "protocol": "TCP"}])]
    bad = kubectl.run("patch", "pod", "edit", "--type=json", "-p",
                      '[{"op":"test","path":"/metadata/labels/m","value":"nope"}]', check=False)
    # upstream answers 422 with the json-patch error; kubectl prints "The request is invalid: ..."
    assert bad.returncode == 1
    assert "testing value /metadata/labels/m failed" in bad.stderr
    assert kubectl.out("label", "pod", "edit", "tier-") == "pod/edit unlabeled\n"


def test_watch_and_delete_wait(kubectl: Kubectl) -> None:
    kubectl.out("create", "-f", "-", stdin=POD.format(name="watched", app="watched"))
    with background(kubectl.popen("get", "pods", "-l", "app=watched", "-w")) as lines:
        wait_for(lambda: any(line.startswith("watched") for line in lines))
        assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        kubectl.out("label", "pod", "watched", "seen=yes")
        wait_for(lambda: sum(line.startswith("watched") for line in lines) >= 2)
        # an unscheduled pod has no kubelet to wait for: deleted at once, as upstream
        assert kubectl.out("delete", "pod", "watched", "--wait") == 'pod "watched" deleted\n'
        wait_for(lambda: sum(line.startswith("watched") for line in lines) >= 3)
    assert kubectl.run("get", "pod", "watched", check=False).stderr.strip() == \
        'Error from server (NotFound): pods "watched" not found'

    assert kubectl.out("create", "configmap", "held", "--from-literal=a=b") == "configmap/held created\n"
    kubectl.out("patch", "configmap", "held", "--type=merge", "-p",
                '{"metadata":{"finalizers":["example.com/hold"]}}')
    with background(kubectl.popen("delete", "configmap", "held", "--wait", "--timeout=20s")) as lines:
        wait_for(lambda: 'configmap "held" deleted\n' in lines)
        time.sleep(0.5)
        deleting = json.loads(kubectl.out("get", "configmap", "held", "-o", "json"))
        assert deleting["metadata"]["deletionTimestamp"]
        assert kubectl.out("get", "configmap", "held", "-o", "name") == "configmap/held\n"
        kubectl.out("patch", "configmap", "held", "--type=json", "-p",
                    '[{"op":"remove","path":"/metadata/finalizers"}]')
        wait_for(lambda: kubectl.run("get", "configmap", "held", check=False).returncode == 1)
    # get -w ends by itself when the server closes the watch (--request-timeout bounds it)
    ended = kubectl.run("get", "configmaps", "-w", "--request-timeout=2s", timeout=20)
    assert ended.returncode == 0


def test_auth_can_i_forbidden_and_unauthorized(kubectl: Kubectl, tmp_path: Path) -> None:
    assert kubectl.out("auth", "can-i", "list", "pods") == "yes\n"
    assert kubectl.out("auth", "can-i", "create", "pods/binding") == "yes\n"
    nobody = kubectl.server.kubeconfig(tmp_path / "nobody", token=kubectl.server.nobody_token)
    denied = kubectl.run("auth", "can-i", "list", "pods", kubeconfig=nobody, check=False)
    assert (denied.returncode, denied.stdout) == (1, "no\n")
    forbidden = kubectl.run("get", "pods", kubeconfig=nobody, check=False)
    assert forbidden.returncode == 1
    assert forbidden.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "nobody" cannot list resource "pods" '
        f'in API group "" in the namespace "{kubectl.namespace}"')
    wrong = kubectl.server.kubeconfig(tmp_path / "wrong", token="not-a-token")
    unauthorized = kubectl.run("get", "pods", kubeconfig=wrong, check=False)
    assert unauthorized.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized)" in unauthorized.stderr


def test_rbac_role_binding_grants_access(kubectl: Kubectl, tmp_path: Path) -> None:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": kubectl.namespace},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "nobody-reads", "namespace": kubectl.namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nobody"}]}
    applied = kubectl.out("apply", "-f", "-", stdin=yaml.safe_dump_all([role, binding]))
    assert applied == ("role.rbac.authorization.k8s.io/pod-reader created\n"
                       "rolebinding.rbac.authorization.k8s.io/nobody-reads created\n")
    nobody = kubectl.server.kubeconfig(tmp_path / "nobody", token=kubectl.server.nobody_token)
    assert kubectl.run("auth", "can-i", "list", "pods", kubeconfig=nobody).stdout == "yes\n"
    assert kubectl.run("auth", "can-i", "delete", "pods", kubeconfig=nobody, check=False).stdout == "no\n"
    assert kubectl.run("auth", "can-i", "list", "pods", "-n", "default", kubeconfig=nobody,
                       check=False).stdout == "no\n"
    assert kubectl.run("get", "pods", kubeconfig=nobody).returncode == 0


def test_impersonation(kubectl: Kubectl, tmp_path: Path) -> None:
    # admin (system:masters) may impersonate; the answer is nobody's, not admin's
    assert kubectl.run("auth", "can-i", "delete", "pods", "--as=nobody", check=False).stdout == "no\n"
    as_nobody = kubectl.run("get", "secrets", "--as=nobody", check=False)
    assert 'User "nobody" cannot list resource "secrets"' in as_nobody.stderr
    nobody = kubectl.server.kubeconfig(tmp_path / "nobody", token=kubectl.server.nobody_token)
    escalate = kubectl.run("get", "pods", "--as=admin", kubeconfig=nobody, check=False)
    assert escalate.returncode == 1
    assert escalate.stderr.strip() == ('Error from server (Forbidden): users "admin" is forbidden: User '
                                       '"nobody" cannot impersonate resource "users" in API group "" at '
                                       'the cluster scope')


def test_typed_create_commands(kubectl: Kubectl) -> None:
    """The commands kubectl >= 1.32 sends as protobuf (reference B5.6), answered in JSON."""
    assert kubectl.out("create", "deployment", "d", "--image=nginx") == "deployment.apps/d created\n"
    assert kubectl.out("create", "service", "clusterip", "s", "--tcp=80:8080") == "service/s created\n"
    assert kubectl.out("create", "service", "nodeport", "np", "--tcp=80:8080") == "service/np created\n"
    assert kubectl.out("create", "secret", "generic", "sec", "--from-literal=a=b") == "secret/sec created\n"
    assert kubectl.out("create", "serviceaccount", "sa") == "serviceaccount/sa created\n"
    assert kubectl.out("create", "configmap", "cm", "--from-literal=x=y") == "configmap/cm created\n"
    assert kubectl.out("scale", "deployment", "d", "--replicas=2") == "deployment.apps/d scaled\n"
    assert kubectl.out("get", "deploy", "d", "-o", "jsonpath={.spec.replicas}") == "2"
    services = {r[0]: r for r in rows(kubectl.out("get", "svc"))[1:]}
    assert services["s"][1] == "ClusterIP" and services["s"][2].startswith("10.96.")
    assert services["np"][1] == "NodePort" and re.fullmatch(r"80:3\d{4}/TCP", services["np"][4])
    assert kubectl.out("get", "secret", "sec", "-o", "jsonpath={.data.a}") == "Yg=="  # base64("b")
    applied = kubectl.out("apply", "--server-side", "-f", "-",
                          stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: b}\n")
    assert applied == "configmap/ssa serverside-applied\n"


def test_rbac_cluster_roles_groups_and_service_accounts(kubectl: Kubectl) -> None:
    """Subjects other than users, checked through impersonation (the token file has two users)."""
    ns = kubectl.namespace
    assert kubectl.out("create", "clusterrole", f"cm-reader-{ns}", "--verb=get,list",
                       "--resource=configmaps", namespaced=False) == \
        f"clusterrole.rbac.authorization.k8s.io/cm-reader-{ns} created\n"
    assert kubectl.out("create", "clusterrolebinding", f"ops-{ns}", f"--clusterrole=cm-reader-{ns}",
                       f"--group=ops-{ns}", namespaced=False) == \
        f"clusterrolebinding.rbac.authorization.k8s.io/ops-{ns} created\n"
    created = kubectl.out("create", "rolebinding", "robot", f"--clusterrole=cm-reader-{ns}",
                          f"--serviceaccount={ns}:robot")
    assert created == "rolebinding.rbac.authorization.k8s.io/robot created\n"

    def can(*args: str) -> str:
        return kubectl.run("auth", "can-i", *args, check=False).stdout.strip()

    assert can("list", "configmaps", "--as=someone", f"--as-group=ops-{ns}", "-A") == "yes"
    assert can("delete", "configmaps", "--as=someone", f"--as-group=ops-{ns}") == "no"
    assert can("list", "configmaps", "--as=someone") == "no"
    robot = f"--as=system:serviceaccount:{ns}:robot"
    assert can("get", "configmaps", robot) == "yes"
    assert can("get", "configmaps", robot, "-n", "default") == "no"  # a RoleBinding is per namespace
    assert can("get", "secrets", robot) == "no"
    listed = kubectl.run("get", "configmaps", robot, "-o", "name")
    assert listed.returncode == 0


def test_namespace_deletion_is_terminating(kubectl: Kubectl) -> None:
    """A deleted namespace is Terminating while content remains (here a ConfigMap held by a
    finalizer) and refuses new content, with upstream's message."""
    ns = f"{kubectl.namespace}-gone"
    assert kubectl.out("create", "namespace", ns, namespaced=False) == f"namespace/{ns} created\n"
    kubectl.out("create", "-n", ns, "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                "  name: held\n  finalizers: [example.com/hold]\n")
    assert kubectl.out("delete", "namespace", ns, "--wait=false", namespaced=False) == \
        f'namespace "{ns}" deleted\n'
    assert rows(kubectl.out("get", "namespace", ns, namespaced=False))[1][:2] == [ns, "Terminating"]
    refused = kubectl.run("create", "configmap", "late", "-n", ns, check=False)
    assert refused.returncode == 1
    assert (f'configmaps "late" is forbidden: unable to create new content in namespace {ns} because '
            "it is being terminated") in refused.stderr
    kubectl.out("patch", "configmap", "held", "-n", ns, "--type=json", "-p",
                '[{"op":"remove","path":"/metadata/finalizers"}]')
