#!/usr/bin/env python3
"""Copies a Lambda template (consumer-sqs, consumer-sns) out of the walcast workspace
into a crate of its own that builds anywhere, depending on the walcast-lambda library.

    lambda/scripts/copy-template.py consumer-sqs ~/code/my-function --name my-function \\
        [--git https://github.com/OWNER/walcast --rev COMMIT | --path /path/to/walcast]

Writes DEST/Cargo.toml with every `workspace = true` resolved from this repository's
root Cargo.toml (versions, features, lints, release profile), walcast-lambda and
change-event taken from --git (default: this checkout's `origin` remote, at its HEAD
commit) or --path (a checkout on disk), and its own `[workspace]`; copies src/, events/
and README.md, .cargo/config.toml (the function's size-optimized release profile, read by
`cargo lambda build` and `sam build` in the copy's directory), and Cargo.lock (so the copy
builds with the versions tested here).
The template's tests/ stay behind: they read this repository's fixtures.
"""
import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
OURS = {"walcast-lambda": "lambda", "change-event": "change-event"}


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def key(k: str) -> str:
    return k if all(c.isalnum() or c in "-_" for c in k) else value(k)


def table(name: str, entries: dict) -> str:
    lines = [f"[{name}]"]
    for k, v in entries.items():
        lines.append(f"{key(k)} = {value(v)}")
    return "\n".join(lines) + "\n"


def resolve(dep_name: str, spec, workspace_deps: dict, source: dict):
    if dep_name in OURS:
        # From the workspace or by path inside it: from --git or --path in the copy,
        # with the features the template asks for.
        extra = {k: v for k, v in spec.items() if k in ("features", "default-features")} \
            if isinstance(spec, dict) else {}
        if "path" in source:
            return {"path": str(pathlib.Path(source["path"]) / OURS[dep_name]), **extra}
        return {**source, **extra}
    if not (isinstance(spec, dict) and spec.get("workspace")):
        return spec
    base = workspace_deps[dep_name]
    base = {"version": base} if isinstance(base, str) else dict(base)
    extra = {k: v for k, v in spec.items() if k != "workspace"}
    if "features" in extra:
        base["features"] = sorted(set(base.get("features", [])) | set(extra.pop("features")))
    base.update(extra)
    return base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", help="consumer-sqs or consumer-sns")
    parser.add_argument("dest", type=pathlib.Path)
    parser.add_argument("--name", help="package name of the copy (default: the template's)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--git", help="git URL of a walcast repository")
    where.add_argument("--path", type=pathlib.Path, help="a walcast checkout on disk")
    parser.add_argument("--rev", help="with --git: the commit to pin")
    args = parser.parse_args()

    src = ROOT / args.template
    if not (src / "Cargo.toml").is_file():
        sys.exit(f"copy-template: {src} is not a template (try consumer-sqs or consumer-sns)")
    if args.dest.exists() and any(args.dest.iterdir()):
        sys.exit(f"copy-template: {args.dest} exists and is not empty: choose a new directory")
    if args.path:
        source = {"path": str(args.path.resolve())}
    else:
        url = args.git or subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                                         capture_output=True, text=True).stdout.strip()
        if not url:
            sys.exit("copy-template: no --git URL and no `origin` remote: pass --git URL or --path DIR")
        # A clone of a local repository has a path for its origin: cargo wants a URL.
        if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):
            url = pathlib.Path(url).resolve().as_uri()
        rev = args.rev or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                         capture_output=True, text=True).stdout.strip()
        source = {"git": url, "rev": rev}

    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    ws = root["workspace"]
    manifest = tomllib.loads((src / "Cargo.toml").read_text())
    package = {k: (ws["package"][k] if isinstance(v, dict) and v.get("workspace") else v)
               for k, v in manifest["package"].items() if k != "autotests"}
    if args.name:
        package["name"] = args.name
    out = [f"# Copied from walcast's {args.template} template by lambda/scripts/copy-template.py.\n",
           table("package", package)]
    for section in ["dependencies", "dev-dependencies"]:
        deps = {n: resolve(n, s, ws["dependencies"], source) for n, s in manifest.get(section, {}).items()}
        if section == "dev-dependencies":
            # The dev-dependencies serve the template's tests, which stay behind.
            continue
        out.append(table(section, deps))
    for bin_ in manifest.get("bin", []):
        out.append("[[bin]]\n" + "".join(f"{key(k)} = {value(v)}\n" for k, v in bin_.items()))
    for group, lints in ws.get("lints", {}).items():
        out.append(table(f"lints.{group}", lints))
    for profile, settings in root.get("profile", {}).items():
        plain = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        out.append(table(f"profile.{profile}", plain))
        for sub, subsettings in settings.items():
            if isinstance(subsettings, dict):
                for pkg, s in subsettings.items():
                    out.append(table(f"profile.{profile}.{sub}.{key(pkg)}", s))
    out.append("# A workspace of its own, also when copied into another workspace's tree.\n[workspace]\n")

    args.dest.mkdir(parents=True, exist_ok=True)
    (args.dest / "Cargo.toml").write_text("\n".join(out))
    for part in ["src", "events", ".cargo"]:
        if (src / part).is_dir():
            shutil.copytree(src / part, args.dest / part)
    if args.name:
        # main.rs calls the template's library by its crate name.
        old, new = args.template.replace("-", "_"), args.name.replace("-", "_")
        for path in (args.dest / "src").rglob("*.rs"):
            text = path.read_text()
            path.write_text(text.replace(f"{old}::", f"{new}::"))
    shutil.copy2(src / "README.md", args.dest / "README.md")
    shutil.copy2(ROOT / "Cargo.lock", args.dest / "Cargo.lock")
    print(f"copied {args.template} to {args.dest} (walcast-lambda from {value(source)})")


if __name__ == "__main__":
    main()
