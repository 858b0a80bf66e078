#!/usr/bin/env python3
"""Renders the Graft chart's agent RBAC, agent ServiceAccount and admission
policy for the end-to-end suite (scenario 9) with Helm's own SDK (Helm v4,
through PyPI's helm-python-sdk), and prints them as one JSON document:

    {"helm": "<helm SDK version>", "objects": [ ...rendered objects... ]}

The suite (tests/e2e, graft-e2e) runs it with the Python that
GRAFT_E2E_HELM_PYTHON names; tests/e2e/run.sh sets that up (the same
virtualenv as tests/helm). The objects are the chart's own: nothing is
copied or edited here, the run's label comes in through `commonLabels`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

TEMPLATES = {"agent-rbac.yaml", "admission-policy.yaml", "serviceaccounts.yaml"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", required=True, type=Path)
    parser.add_argument("--release", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--label", required=True, help="KEY=VALUE added to every object (commonLabels)")
    args = parser.parse_args()
    key, _, value = args.label.partition("=")
    values = {"admissionPolicy": {"enabled": True}, "commonLabels": {key: value}}
    chart = helm.Chart.load(args.chart)
    files = chart.render(values, name=args.release, namespace=args.namespace)
    objects = []
    for path, text in sorted(files.items()):
        if Path(path).name not in TEMPLATES:
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    json.dump({"helm": helm.helm_sdk_version(), "objects": objects}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
