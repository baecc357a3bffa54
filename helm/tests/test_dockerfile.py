"""engine/Dockerfile cannot be built here (no Docker engine); check what can be checked without
one: every path it copies exists, it copies every workspace member (cargo needs all their
manifests for --locked), the image runs as the user the chart expects, and the profile-guided
build's rustc wrapper instruments the project's crates and nothing else."""

from __future__ import annotations

import os
import re
import subprocess

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


WRAPPER = REPO / "engine" / "pgo" / "rustc-wrapper.sh"
BUILD = REPO / "engine" / "pgo" / "build.sh"


def pgo_packages() -> list[str]:
    """The packages build.sh instruments (and cleans before each stage)."""
    found = re.search(r"^packages=\((.*)\)$", BUILD.read_text(), re.M)
    assert found, "build.sh names no packages"
    return found.group(1).split()


def wrapped(package: str, crate: str, mode: str | None) -> list[str]:
    """The arguments the PGO wrapper passes on for rustc invoked by cargo on `crate` of
    `package` (printf stands for rustc and prints them one by one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_PGO_")}
    env |= {"CARGO_PKG_NAME": package, "CORDON_PGO_PACKAGES": " ".join(pgo_packages())}
    if mode:
        env |= {"CORDON_PGO_MODE": mode, "CORDON_PGO_PATH": "/tmp/p data"}
    rustc = ["printf", "%s\\n", "--crate-name", crate, "src/lib.rs"]
    out = subprocess.run(["sh", str(WRAPPER), *rustc], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_pgo_wrapper_adds_the_profile_flag_to_the_project_crates_only():
    packages = pgo_packages()
    assert {"cordon-engine", "cordon-rules", "cordon-benches"} <= set(packages)
    plain = ["--crate-name", "{}", "src/lib.rs"]
    # Libraries and binaries of those packages.
    for package, crate in [
        ("cordon-engine", "cordon_engine"),
        ("cordon-engine", "cordon"),
        ("cordon-rules", "cordon_rules"),
        ("cordon-benches", "throughput"),
    ]:
        args = [a.format(crate) for a in plain]
        assert wrapped(package, crate, "generate") == [*args, "-Cprofile-generate=/tmp/p data"]
        assert wrapped(package, crate, "use") == [*args, "-Cprofile-use=/tmp/p data"]
        assert wrapped(package, crate, None) == args
    # Dependencies, build scripts, the Kafka connectors, and names that only start like ours.
    for package, crate in [
        ("datafusion", "datafusion"),
        ("cordon-engine", "build_script_build"),
        ("cordon-connectors", "cordon_connectors"),
        ("cordon-engine-x", "cordon_engine_x"),
    ]:
        assert wrapped(package, crate, "generate") == [a.format(crate) for a in plain]


def test_pgo_packages_exist():
    """A renamed package would silently lose its profile; each one named must exist."""
    names = set()
    for manifest in REPO.glob("*/Cargo.toml"):
        names |= set(re.findall(r'^name = "([^"]+)"', manifest.read_text(), re.M))
    for package in pgo_packages():
        assert package in names, f"build.sh names {package}, which no Cargo.toml defines"


def test_image_is_built_with_the_profile_by_default():
    steps = instructions()
    assert ("ARG", "PGO=1") in steps
    runs = [rest for word, rest in steps if word == "RUN"]
    assert any("rustup component add llvm-tools" in rest for rest in runs)
    assert any("engine/pgo/build.sh cordon" in r and "cp target/pgo/cordon" in r for r in runs)
