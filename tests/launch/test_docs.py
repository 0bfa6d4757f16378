"""The contributor and launch documentation lives in the repository: README and docs/ link only to files
that exist inside it, and docs/launch.md quotes the launchers as they are."""

import glob
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _read(path):
    with open(path) as f:
        return f.read()


def test_docs_exist_and_readme_links_them():
    readme = _read(os.path.join(ROOT, "README.md"))
    for name in ("design.md", "launch.md"):
        assert os.path.isfile(os.path.join(ROOT, "docs", name))
        assert f"](docs/{name})" in readme


def test_no_reference_outside_the_repository():
    for path in DOCS:
        text = _read(path)
        assert not re.search(r"\.\./shared|DESIGN\.md", text), f"{path} points outside the repository"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            full = os.path.normpath(os.path.join(os.path.dirname(path), target))
            assert full.startswith(ROOT + os.sep) and os.path.exists(full), f"{path}: broken link {target}"


def test_design_covers_the_conventions():
    text = _read(os.path.join(ROOT, "docs", "design.md"))
    for topic in ("## Layout", "## Dependency direction", "**Models.**", "**Sharding.**", "**Multi-host.**",
                  "**Checkpoints.**", "**Data.**", "**Configs.**", "**Errors.**", "## Tests"):
        assert topic in text, topic
    # folders it lists exist
    for folder in re.findall(r"^(\w+)/ ", text, flags=re.M):
        assert os.path.isdir(os.path.join(ROOT, folder)), folder


def test_launch_doc_matches_the_launchers():
    text = _read(os.path.join(ROOT, "docs", "launch.md"))
    for path in re.findall(r"\b(launch/[\w./-]+\.(?:sh|sbatch|yaml))", text) + ["Dockerfile"]:
        assert os.path.isfile(os.path.join(ROOT, path)), path
    with open(os.path.join(ROOT, "launch", "k8s", "jobset.yaml")) as f:
        [js] = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "JobSet"]
    [rjob] = js["spec"]["replicatedJobs"]
    [c] = rjob["template"]["spec"]["template"]["spec"]["containers"]
    address = next(v["value"] for v in c["env"] if v["name"] == "JAX_COORDINATOR_ADDRESS")
    assert f"`{address}`" in text  # the coordinator the doc names is the manifest's
    assert f"jobs/{js['metadata']['name']}-{rjob['name']}-0" in text
    sbatch = _read(os.path.join(ROOT, "launch", "slurm.sbatch"))
    [signal] = re.findall(r"^#SBATCH (--signal=\S+)", sbatch, flags=re.M)
    assert signal in text
