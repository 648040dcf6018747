"""Capture the protobuf request bodies real kubectl sends (run by hand; the output is committed).

    .venv/bin/python tests/controlplane/data/capture_protobuf.py [KUBECTL [KUBECTL_JSON [OUT_DIR]]]

(committed: kubectl 1.32.5 -> protobuf/, JSON from kubectl 1.31.9; kubectl 1.33.1 was checked to
send byte-identical bodies for every command below.)

A stdlib HTTP server on 127.0.0.1 serves just enough discovery for kubectl's typed commands,
records every POST body kubectl sends as `application/vnd.kubernetes.protobuf`, and answers 201 with
a JSON object.  Each body is written to protobuf/<name>.bin, the JSON body kubectl 1.31 sends for
the same command to protobuf/<name>.json, and protobuf/index.json records the command lines and
versions, so test_protobuf.py checks the decoder against real bytes and the real JSON equivalent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent / "protobuf"
KUBECTL = sys.argv[1] if len(sys.argv) > 1 else "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
# kubectl 1.31 sends the same objects as JSON: the reference the decoded protobuf must equal.
KUBECTL_JSON = sys.argv[2] if len(sys.argv) > 2 else "/usr/lib/google-cloud-sdk/bin/kubectl.1.31"

COMMANDS = {
    "namespace": ["create", "namespace", "ns1"],
    "configmap": ["create", "configmap", "cm1", "-n", "default", "--from-literal=a=b",
                  "--from-literal=key.two=value two"],
    "secret_generic": ["create", "secret", "generic", "s1", "--from-literal=user=admin",
                       "--from-literal=pw=s3cr3t\n"],
    "secret_tls_type": ["create", "secret", "generic", "s2", "--type=kubernetes.io/basic-auth",
                        "--from-literal=username=u"],
    "service_clusterip": ["create", "service", "clusterip", "svc1", "--tcp=80:8080", "--tcp=443:https"],
    "service_nodeport": ["create", "service", "nodeport", "np1", "--tcp=80:8080", "--node-port=30080"],
    "service_headless": ["create", "service", "clusterip", "hl", "--clusterip=None", "--tcp=53:53"],
    "service_externalname": ["create", "service", "externalname", "ext1", "--external-name=example.com"],
    "deployment": ["create", "deployment", "web", "--image=nginx:1.25", "--replicas=3", "--port=80"],
    "deployment_command": ["create", "deployment", "sleeper", "--image=busybox", "--", "sleep", "3600"],
    "serviceaccount": ["create", "serviceaccount", "sa1"],
    "ssar_get_pods": ["auth", "can-i", "get", "pods"],
    "ssar_deployments_ns": ["auth", "can-i", "create", "deployments.apps", "-n", "kube-system"],
    "ssar_named_subresource": ["auth", "can-i", "get", "pods/log", "--subresource=", "-n", "x"],
    "ssar_nonresource": ["auth", "can-i", "get", "/healthz"],
    "ssrr_list": ["auth", "can-i", "--list", "-n", "kube-system"],
    "ssr_whoami": ["auth", "whoami"],
    "role": ["create", "role", "r1", "--verb=get,list", "--resource=pods,deployments.apps",
             "--resource-name=a"],
    "rolebinding": ["create", "rolebinding", "rb1", "--role=r1", "--user=bob", "--group=devs",
                    "--serviceaccount=default:sa1"],
    "clusterrole": ["create", "clusterrole", "cr1", "--verb=get", "--non-resource-url=/logs/*"],
    "clusterrolebinding": ["create", "clusterrolebinding", "crb1", "--clusterrole=cluster-admin",
                           "--group=admins"],
}

CORE = [("namespaces", "Namespace", False), ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True), ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True), ("pods", "Pod", True)]
GROUPS = {
    "apps/v1": [("deployments", "Deployment", True)],
    "authorization.k8s.io/v1": [("selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
                                ("selfsubjectrulesreviews", "SelfSubjectRulesReview", False)],
    "authentication.k8s.io/v1": [("selfsubjectreviews", "SelfSubjectReview", False)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True),
                                     ("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
captured: list[tuple[str, bytes]] = []


def _resource_list(group_version: str, resources: list[tuple[str, str, bool]]) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                           "verbs": VERBS} for n, k, ns in resources]}


def _discovery(path: str) -> dict | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                   "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in GROUPS]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path == "/api/v1":
        return _resource_list("v1", CORE)
    for gv, resources in GROUPS.items():
        if path == f"/apis/{gv}":
            return _resource_list(gv, resources)
    return None


class Handler(BaseHTTPRequestHandler):
    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        found = _discovery(self.path.split("?")[0])
        if found is None:
            self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404})
        else:
            self._reply(200, found)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        captured.append((self.headers.get("Content-Type", ""), body))
        reply = {"apiVersion": "v1", "kind": "Status", "metadata": {"name": "x"},
                 "status": {"allowed": True}}
        self._reply(201, reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _run(kubectl: str, argv: list[str], env: dict[str, str], content: str) -> bytes | None:
    captured.clear()
    subprocess.run([kubectl, *argv], env=env, capture_output=True, timeout=60, check=False)
    bodies = [body for ctype, body in captured if content in ctype]
    return bodies[0] if bodies else None


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    OUT.mkdir(exist_ok=True)
    version = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True,
                             text=True, check=True).stdout
    version_json = subprocess.run([KUBECTL_JSON, "version", "--client", "-o", "json"], capture_output=True,
                                  text=True, check=True).stdout
    index = {"kubectl": json.loads(version)["clientVersion"]["gitVersion"],
             "kubectl_json": json.loads(version_json)["clientVersion"]["gitVersion"], "vectors": {}}
    with tempfile.TemporaryDirectory() as home:
        config = Path(home) / "config"
        config.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
            "users": [{"name": "u", "user": {}}]}))
        env = dict(os.environ, HOME=home, KUBECONFIG=str(config))
        for name, argv in COMMANDS.items():
            pb = _run(KUBECTL, argv, env, "protobuf")
            js = _run(KUBECTL_JSON, argv, env, "json")
            if pb is None or js is None:
                print(f"{name}: missing a body")
                continue
            (OUT / f"{name}.bin").write_bytes(pb)
            (OUT / f"{name}.json").write_text(json.dumps(json.loads(js), indent=1) + "\n")
            index["vectors"][name] = {"argv": argv, "bytes": len(pb)}
            print(f"{name}: {len(pb)} bytes")
    server.shutdown()
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
