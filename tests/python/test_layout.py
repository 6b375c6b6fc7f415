"""The workspace's shape (issue 22, DESIGN §6): the product alone at the root, members that depend
on it and never the reverse, and no module that imports another in a loop."""

import collections
import json
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEMBERS = ["threadwarden-bench", "threadwarden-lab", "threadwarden-testkit"]
# Crates that only measuring, training or fuzzing need: none may reach the sidecar.
TOOL_CRATES = {"criterion", "hdrhistogram", "ureq", "libfuzzer-sys", "proptest", "tempfile"}


def metadata():
    host = re.search(r"^host: (\S+)$", subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True).stdout, re.M).group(1)
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def normal_deps_closure(meta, root_name):
    """Every package reachable from root_name through normal (not dev, not build) edges."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    names = {p["id"]: p["name"] for p in meta["packages"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == root_name)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return {names[p] for p in seen}


def test_the_product_depends_on_no_tool_and_no_member():
    meta = metadata()
    closure = normal_deps_closure(meta, "threadwarden")
    assert not closure & TOOL_CRATES, closure & TOOL_CRATES
    assert not closure & set(MEMBERS), closure & set(MEMBERS)
    # The check can fail: the load generator's crate does pull a tool crate in.
    assert "hdrhistogram" in normal_deps_closure(meta, "threadwarden-bench")


def test_every_member_depends_on_the_product():
    meta = metadata()
    for member in MEMBERS:
        assert "threadwarden" in normal_deps_closure(meta, member), member


def module_graph(src):
    """Module path → the sibling or cousin modules it names through `crate::` or `super::`."""
    files = {}
    for path in src.rglob("*.rs"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        files["::".join(parts)] = path
    graph = collections.defaultdict(set)
    for module, path in files.items():
        if path.name == "tests.rs":
            continue
        text = re.sub(r"//.*", "", path.read_text())
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
        for named in re.findall(r"crate::([a-z_:]+)", text):
            segs = named.split("::")
            target = next(
                ("::".join(segs[:i]) for i in range(len(segs), 0, -1) if "::".join(segs[:i]) in files),
                None,
            )
            if target and target != module and not module.startswith(target + "::"):
                graph[module].add(target)
        parent = module.rpartition("::")[0]
        for named in re.findall(r"super::([a-z_]+)", text):
            target = f"{parent}::{named}" if parent else named
            if target in files and target != module:
                graph[module].add(target)
    return files, graph


def cycles(files, graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in files:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_in_a_loop():
    for crate in ["src", "bench/src", "lab/src", "testkit/src"]:
        files, graph = module_graph(ROOT / crate)
        assert files, crate
        assert cycles(files, graph) == [], crate


def test_the_loop_check_can_fail(tmp_path):
    (tmp_path / "a.rs").write_text("use crate::b::X;\n")
    (tmp_path / "b.rs").write_text("use crate::a::Y;\n")
    (tmp_path / "lib.rs").write_text("mod a; mod b;\n")
    files, graph = module_graph(tmp_path)
    assert cycles(files, graph) == [["a", "b"]]
