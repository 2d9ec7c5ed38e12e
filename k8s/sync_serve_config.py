"""Copy serve/config.yaml into k8s/rayservice.yaml's serveConfigV2, comments and all.

`python k8s/sync_serve_config.py` after changing serve/config.yaml; the test that
compares the two (tests/test_deploy_manifests.py) says so when they differ.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "  serveConfigV2: |"
INDENT = " " * 4


def synced(manifest: str, serve_config: str) -> str:
    """The manifest with its serveConfigV2 block replaced by `serve_config`."""
    lines = manifest.splitlines()
    start = lines.index(KEY) + 1
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(INDENT)):
        end += 1
    block = [INDENT + ln if ln.strip() else "" for ln in serve_config.splitlines()]
    return "\n".join(lines[:start] + block + lines[end:]) + "\n"


def main() -> None:
    path = ROOT / "k8s" / "rayservice.yaml"
    path.write_text(synced(path.read_text(), (ROOT / "serve" / "config.yaml").read_text()))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
