#!/usr/bin/python3
"""Check Kubernetes manifests against the Kubernetes API's own object models, offline.

The models are those of Debian's python3-kubernetes, the official client generated from the
Kubernetes OpenAPI specification: each object lists the API's fields (by their JSON names)
and their types. Every field of every built-in object in the files given must be one of its
model's, with a value of the model's type; the object's apiVersion and kind must be an API
the client knows. Custom resources (the Prometheus Operator's) are listed as skipped: the
tests check them against their own schemas.

Usage: kubernetes-models-check.py FILE...   (exit 0: all valid, 1: errors printed, 2: usage)
"""
import re
import sys

import kubernetes.client
import kubernetes.client.models as models
import yaml

# API groups the client serves: group/version -> API class. Anything else is a custom resource.
APIS = {
    "v1": "CoreV1Api",
    "apps/v1": "AppsV1Api",
    "scheduling.k8s.io/v1": "SchedulingV1Api",
    "rbac.authorization.k8s.io/v1": "RbacAuthorizationV1Api",
    "policy/v1": "PolicyV1Api",
}
SCALARS = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def check(value, type_name, path, errors):
    if value is None:
        return
    if type_name == "object":  # IntOrString, raw extensions: anything
        return
    if type_name in SCALARS:
        ok = isinstance(value, SCALARS[type_name]) and not (
            type_name in ("int", "float") and isinstance(value, bool)
        )
        if not ok:
            errors.append(f"{path}: {type_name} expected, found {value!r}")
        return
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: a list expected")
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f"{path}[{i}]", errors)
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            errors.append(f"{path}: a map expected")
            return
        for k, v in value.items():
            check(v, m.group(1), f"{path}.{k}", errors)
        return
    model = getattr(models, type_name, None)
    if model is None:
        errors.append(f"{path}: the client has no model {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: an object ({type_name}) expected")
        return
    by_json = {j: a for a, j in model.attribute_map.items()}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: not a field of {type_name}")
            continue
        check(v, model.openapi_types[attr], f"{path}.{key}", errors)


def main(files):
    if not files:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    errors = []
    for file in files:
        with open(file) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for i, doc in enumerate(docs):
            where = f"{file}#{i}"
            api, kind = doc.get("apiVersion"), doc.get("kind")
            if not isinstance(api, str) or not isinstance(kind, str):
                errors.append(f"{where}: no apiVersion or kind")
                continue
            if api.split("/")[0].endswith("monitoring.coreos.com"):
                print(f"{where}: {api} {kind}: skipped (a custom resource)")
                continue
            api_class = APIS.get(api)
            if api_class is None:
                errors.append(f"{where}: {api} is not an API this check knows")
                continue
            s = snake(kind)
            api_methods = dir(getattr(kubernetes.client, api_class))
            if f"create_namespaced_{s}" not in api_methods and f"create_{s}" not in api_methods:
                errors.append(f"{where}: {api} has no kind {kind}")
                continue
            type_name = api.split("/")[-1].capitalize() + kind
            before = len(errors)
            check(doc, type_name, f"{where}:{kind}", errors)
            if len(errors) == before:
                print(f"{where}: {api} {kind}: valid")
    for e in errors:
        print(f"error: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
