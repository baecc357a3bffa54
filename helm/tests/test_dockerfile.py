"""engine/Dockerfile cannot be built here (no Docker engine); check what can be checked without
one: every path it copies exists, it copies every workspace member (cargo needs all their
manifests for --locked), and the image runs as the user the chart expects."""

from __future__ import annotations

import re

import yaml

from conftest import CHART, REPO

DOCKERFILE = REPO / "engine" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_copied_paths_exist_in_the_repo():
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            *sources, _dest = [t for t in rest.split() if not t.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"


def test_copies_every_workspace_member():
    members = re.search(r"members\s*=\s*\[(.*?)\]", (REPO / "Cargo.toml").read_text(), re.S)
    copied = {
        src.rstrip("/")
        for word, rest in instructions()
        if word == "COPY" and "--from=" not in rest
        for src in [t for t in rest.split() if not t.startswith("--")][:-1]
    }
    for member in re.findall(r'"([^"]+)"', members.group(1)):
        assert member in copied, f"workspace member {member} is not copied"
    assert {"Cargo.toml", "Cargo.lock"} <= copied


def test_runtime_image_matches_the_chart():
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert stages[0].startswith("rust:1.95-bookworm")
    assert len(stages) == 2
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    users = [rest for word, rest in runtime if word == "USER"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    assert users and users[-1].split(":")[0] in (str(uid), "nonroot")
    assert ("ENTRYPOINT", '["/usr/local/bin/cordon"]') in runtime
    copies = " ".join(rest for word, rest in runtime if word == "COPY")
    assert "/usr/local/bin/cordon" in copies
    assert "/etc/cordon/rules" in copies


def test_ignore_file_lets_every_copied_path_through():
    """engine/Dockerfile.dockerignore ignores everything, then lets the copied paths back in."""
    lines = [
        line.strip()
        for line in (REPO / "engine" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert "**/target" in lines
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            for src in [t for t in rest.split() if not t.startswith("--")][:-1]:
                top = src.rstrip("/").split("/")[0]
                assert f"!{top}" in lines, f"COPY {src}: excluded from the build context"

