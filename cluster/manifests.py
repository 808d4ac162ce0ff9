"""Check the KubeRay manifests in cluster/kuberay/ against KubeRay's CRD schemas, offline.

    python -m streampro.cluster.manifests [CRD_DIR]     # exit 1 listing every problem

Each RayCluster/RayJob/RayService document is validated with jsonschema against the
`openAPIV3Schema` of its kind and version, plus the check the API server's pruning would do
silently: a field the schema does not know (a typo) is reported instead of dropped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KUBERAY_DIR = Path(__file__).resolve().parent / "kuberay"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 60k lines: use libyaml
CRD_ENV = "STREAMPRO_KUBERAY_CRDS"

Schemas = dict[tuple[str, str], dict[str, Any]]
"""(apiVersion, kind) -> the CRD version's openAPIV3Schema."""


def find_crds_dir() -> Path | None:
    """$STREAMPRO_KUBERAY_CRDS, else ../shared/kuberay-crds beside the checkout, else None."""
    env = os.environ.get(CRD_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds")
    return next((p for p in candidates if p.is_dir() and any(p.glob("*.yaml"))), None)


def load_crd_schemas(crds_dir: Path) -> Schemas:
    """(apiVersion, kind) -> openAPIV3Schema, for every version of every CRD in the folder."""
    schemas: Schemas = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schemas[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return schemas


def manifest_docs(folder: Path = KUBERAY_DIR) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file.yaml#index", document) for every YAML document in the folder."""
    for path in sorted(folder.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield f"{path.name}#{i}", doc


def unknown_fields(obj: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Paths of fields the structural schema does not declare (what Kubernetes would prune)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, val in obj.items():
            if props is not None and key in props:
                out += unknown_fields(val, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(val, extra, f"{where}.{key}")
            elif props is not None:
                out.append(f"{where}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, val in enumerate(obj):
            out += unknown_fields(val, schema["items"], f"{where}[{i}]")
    return out


def validate(doc: dict[str, Any], schemas: Schemas) -> list[str]:
    """Problems of one KubeRay document ([] = valid); core kinds (PVC, ...) get basic checks."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if not doc.get("metadata", {}).get("name"):
        return ["metadata.name: missing"]
    if key not in schemas:
        if key[0].startswith("ray.io/"):
            return [f"{key[0]} {key[1]}: no such KubeRay CRD version/kind"]
        return []  # core Kubernetes kinds: no CRD to check against
    schema = schemas[key]
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    errors += [f"{p.lstrip('.')}: unknown field" for p in unknown_fields(doc, schema)]
    return errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    crds = Path(argv[0]) if argv else find_crds_dir()
    if crds is None or not crds.is_dir():
        print(f"no KubeRay CRD folder: pass one or set {CRD_ENV}", file=sys.stderr)
        return 1
    schemas = load_crd_schemas(crds)
    bad = 0
    for name, doc in manifest_docs():
        for problem in validate(doc, schemas):
            print(f"{name} ({doc.get('kind')}): {problem}", file=sys.stderr)
            bad += 1
    print(f"{bad} problem(s) in {KUBERAY_DIR}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
