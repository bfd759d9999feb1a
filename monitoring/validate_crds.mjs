// Validates custom resources against the JSON schemas of their CRDs as shipped in npm's
// @kubernetes-models/* packages: the Prometheus operator's (ServiceMonitor, PrometheusRule,
// PodMonitor), KEDA's (ScaledObject, TriggerAuthentication) and Knative Serving's (Service).
// Input on stdin: a JSON array of objects. Output on stdout: a JSON array with one
// {kind, name, error} per object (error null when valid). Exit 0 unless the input is unusable.
import { readFileSync } from "node:fs";

// apiVersion -> the package folder holding one module per kind.
const PACKAGES = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "serving.knative.dev/v1": "@kubernetes-models/knative/serving.knative.dev/v1",
};

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of input) {
  const name = doc?.metadata?.name ?? "?";
  let error = null;
  try {
    const folder = PACKAGES[doc.apiVersion];
    if (!folder) {
      throw new Error(`apiVersion ${doc.apiVersion} has no validator here`);
    }
    const module = await import(`${folder}/${doc.kind}`);
    new module[doc.kind](doc).validate();
  } catch (exc) {
    error = String(exc?.message ?? exc);
  }
  results.push({ kind: doc.kind, name, error });
}
process.stdout.write(JSON.stringify(results));
