// Validates Prometheus operator objects (ServiceMonitor, PrometheusRule, PodMonitor) against
// the JSON schemas of their CRDs as shipped in npm's @kubernetes-models/prometheus-operator.
// Input on stdin: a JSON array of objects. Output on stdout: a JSON array with one
// {kind, name, error} per object (error null when valid). Exit 0 unless the input is unusable.
import { readFileSync } from "node:fs";

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of input) {
  const name = doc?.metadata?.name ?? "?";
  let error = null;
  try {
    if (doc.apiVersion !== "monitoring.coreos.com/v1") {
      throw new Error(`apiVersion ${doc.apiVersion} is not monitoring.coreos.com/v1`);
    }
    const module = await import(
      `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${doc.kind}`
    );
    new module[doc.kind](doc).validate();
  } catch (exc) {
    error = String(exc?.message ?? exc);
  }
  results.push({ kind: doc.kind, name, error });
}
process.stdout.write(JSON.stringify(results));
