"""launch/k8s/jobset.yaml, checked without kubectl: the JobSet fields a multi-host run needs, the shared
ReadWriteMany volume under train.run_dir, and the coordinator address / process ids each pod gets, fed
through core_jax.distributed as the pods would run it."""

import inspect
import os
import re

import jax
import pytest
import yaml

import core_jax.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "launch", "k8s", "jobset.yaml")
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
INDEX_LABEL = "metadata.labels['batch.kubernetes.io/job-completion-index']"
# environment variables that would make core_jax.distributed / jax pick another cluster source in the test
CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_PORT",
                "COORDINATOR_ADDRESS", "NUM_PROCESSES", "JOB_COMPLETION_INDEX", "JOB_NAME", "SERVICE_NAME",
                "KUBERNETES_SERVICE_HOST", "OMPI_MCA_orte_hnp_uri", "PMI_RANK")


def _docs():
    with open(MANIFEST) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFEST}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def manifest():
    docs = _docs()
    jobset = _one(docs, "JobSet")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    [rjob] = jobset["spec"]["replicatedJobs"]  # one indexed Job holds all processes
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    [container] = pod["containers"]
    return dict(docs=docs, jobset=jobset, rjob=rjob, job=job, pod=pod, container=container)


def test_jobset_schema(manifest):
    js, rjob, job, pod, c = (manifest[k] for k in ("jobset", "rjob", "job", "pod", "container"))
    assert js["metadata"]["name"] and rjob["name"]
    assert rjob.get("replicas", 1) == 1
    assert job["completionMode"] == "Indexed"
    assert isinstance(job["parallelism"], int) and job["parallelism"] >= 2
    assert job["completions"] == job["parallelism"]
    assert job["backoffLimit"] == 0  # one failed pod fails the Job, so JobSet restarts all pods together
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires Never
    assert isinstance(c["command"], list) and all(isinstance(a, str) for a in c["command"]) and c["image"]
    # the headless service: JobSet creates it from spec.network
    net = js["spec"]["network"]
    assert net["enableDNSHostnames"] is True
    assert net.get("publishNotReadyAddresses", True) is True
    assert not any(d.get("kind") == "Service" for d in manifest["docs"])  # JobSet owns the Service
    # restarts: JobSet restarts on failure; the exit code 2 rule names the container
    fp = js["spec"]["failurePolicy"]
    assert fp["maxRestarts"] >= 1
    for rule in fp.get("rules", []):
        assert rule["action"] in {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"}
        assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", rule["name"])
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        assert rule["action"] in {"FailJob", "FailIndex", "Ignore", "Count"}
        assert rule["onExitCodes"]["containerName"] == c["name"]
        assert 143 not in rule["onExitCodes"]["values"]  # a preempted run (exit 143) must be restarted


def test_run_dir_on_a_read_write_many_volume(manifest):
    pvcs = {d["metadata"]["name"]: d for d in manifest["docs"] if d.get("kind") == "PersistentVolumeClaim"}
    volumes = {v["name"]: v for v in manifest["pod"]["volumes"]}
    mounts = manifest["container"]["volumeMounts"]
    run_dirs = [a.split("=", 1)[1] for a in manifest["container"]["command"] if a.startswith("train.run_dir=")]
    assert run_dirs, "the command sets train.run_dir= to a folder on the shared volume"
    for run_dir in run_dirs:
        [mount] = [m for m in mounts if run_dir.startswith(m["mountPath"].rstrip("/") + "/")]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim in pvcs, f"PVC {claim} is defined in the manifest"
        assert pvcs[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
        assert not mount.get("readOnly", False)


def _pod_env(manifest, index):
    """The environment the kubelet gives pod `index`: literal values and the completion-index field."""
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for var in manifest["container"]["env"]:
        if "value" in var:
            assert "$(" not in var["value"], "no $(VAR) references: the index variable is added after them"
            env[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in (INDEX_ANNOTATION, INDEX_LABEL), f"unexpected fieldRef {path}"
            env[var["name"]] = str(index)
    return env


def _hostname(manifest, job_index, pod_index):
    js = manifest["jobset"]
    subdomain = js["spec"]["network"].get("subdomain", js["metadata"]["name"])
    return f"{js['metadata']['name']}-{manifest['rjob']['name']}-{job_index}-{pod_index}.{subdomain}"


def test_pod_environment_names_process_zero_as_coordinator(manifest):
    n = manifest["job"]["parallelism"]
    port = {p["containerPort"] for p in manifest["container"]["ports"]}
    envs = [_pod_env(manifest, i) for i in range(n)]
    for i, env in enumerate(envs):
        host, _, p = env["JAX_COORDINATOR_ADDRESS"].rpartition(":")
        assert host == _hostname(manifest, 0, 0)  # pod 0 of job 0, under the JobSet's headless service
        assert int(p) in port and env.get("JAX_COORDINATOR_PORT", p) == p
        assert int(env["JAX_NUM_PROCESSES"]) == n
        assert int(env["JAX_PROCESS_ID"]) == i


def test_variables_are_the_ones_the_runtime_reads(manifest):
    """Every JAX_* variable the manifest sets is read by core_jax/distributed.py (or by jax itself)."""
    sources = [inspect.getsource(core_jax.distributed)]
    sources += [inspect.getsource(m) for m in (jax._src.distributed, jax._src.clusters.cluster)]
    for var in manifest["container"]["env"]:
        if var["name"].startswith("JAX_"):
            assert any(f"'{var['name']}'" in s or f'"{var["name"]}"' in s for s in sources), var["name"]
    own = inspect.getsource(core_jax.distributed)
    assert "JAX_NUM_PROCESSES" in own and "JAX_PROCESS_ID" in own  # jax does not read these two itself


@pytest.mark.parametrize("index", [0, 1])
def test_distributed_initialize_in_each_pod(manifest, monkeypatch, index):
    """core_jax.distributed.initialize() in pod `index` calls jax.distributed.initialize with process 0's
    address, the process count and this pod's id (whatever it detects on its own)."""
    calls = []
    signature = inspect.signature(jax.distributed.initialize)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(signature.bind(*a, **k)))
    for name in list(os.environ):
        if name in CLUSTER_VARS or name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    env = _pod_env(manifest, index)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOSTNAME", _hostname(manifest, 0, index).split(".")[0])
    core_jax.distributed.initialize()
    [bound] = calls
    args = bound.arguments
    # jax.distributed.initialize itself falls back to JAX_COORDINATOR_ADDRESS when none is passed
    assert (args.get("coordinator_address") or os.environ["JAX_COORDINATOR_ADDRESS"]) == env["JAX_COORDINATOR_ADDRESS"]
    assert args.get("num_processes") == manifest["job"]["parallelism"]
    assert args.get("process_id") == index
