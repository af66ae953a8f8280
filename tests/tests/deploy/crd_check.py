"""Validate custom resources against a CRD's openAPIV3Schema with a plain JSON-schema validator.

    python crd_check.py CRD.yaml FILE.yaml...

Reads the first version's openAPIV3Schema of the CRD, drops the x-kubernetes-* keys (the CEL
rules and list types, which a JSON-schema validator does not know) and validates every
document of the CRD's kind in the files. Objects that list their properties refuse other
fields, as the API server does under `kubectl apply --validate=strict` (it would otherwise
prune them). Prints one JSON array: for each document of the kind, its file, name and
errors, each error as "path: message" (path like spec.targetRefs[0].kind). Exits 0 when it
could check, whatever it found; 2 on bad usage or unreadable input.

Run by tests/tests/deploy/crds.rs with the python of the virtualenv that
tests/install-deps.sh makes for kubernetes-validate, which brings jsonschema and PyYAML.
"""

import json
import sys

import jsonschema
import yaml


def plain(node):
    """The schema without x-kubernetes-* keys, closed where it lists properties."""
    if isinstance(node, dict):
        out = {k: plain(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def where(path):
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(root)"


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    spec = crd["spec"]
    version = spec["versions"][0]
    api_version = f"{spec['group']}/{version['name']}"
    schema = plain(version["schema"]["openAPIV3Schema"])
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    results = []
    for name in argv[2:]:
        with open(name, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in documents:
            if doc.get("kind") != spec["names"]["kind"]:
                continue
            errors = []
            if doc.get("apiVersion") != api_version:
                errors.append(f"apiVersion: {doc.get('apiVersion')!r} is not {api_version!r}")
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
                errors.append(f"{where(error.absolute_path)}: {error.message}")
            results.append(
                {
                    "file": name,
                    "name": (doc.get("metadata") or {}).get("name"),
                    "errors": errors,
                }
            )
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, yaml.YAMLError, KeyError, jsonschema.SchemaError) as e:
        print(f"crd_check: {e}", file=sys.stderr)
        sys.exit(2)
