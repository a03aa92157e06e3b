// Copies the chart library from node_modules into console/vendor/ (committed, so the
// daypass binary embeds it and running Daypass needs no Node.js). Run after changing
// its version in package.json: `npm install && npm run vendor`.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const consoleDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = (name) => join(consoleDir, "node_modules", name);
const version = (name) => JSON.parse(readFileSync(join(pkg(name), "package.json"), "utf8")).version;

// The source map is not shipped, so its comment goes too.
const js = readFileSync(join(pkg("chart.js"), "dist", "chart.umd.min.js"), "utf8")
  .replace(/\n\/\/# sourceMappingURL=.*\s*$/, "\n");
writeFileSync(join(consoleDir, "vendor", "chart.umd.min.js"), js);
writeFileSync(join(consoleDir, "vendor", "LICENSE-chart.js.md"), readFileSync(join(pkg("chart.js"), "LICENSE.md")));
writeFileSync(join(consoleDir, "vendor", "LICENSE-kurkle-color.md"), readFileSync(join(pkg("@kurkle/color"), "LICENSE.md")));
writeFileSync(join(consoleDir, "vendor", "VERSIONS"), [
  "# Third-party files in this folder, copied by `npm run vendor` (console/tests/vendor.mjs).",
  `chart.umd.min.js  chart.js ${version("chart.js")} (dist/chart.umd.min.js, source-map comment removed), MIT: LICENSE-chart.js.md`,
  `                  bundles @kurkle/color ${version("@kurkle/color")}, MIT: LICENSE-kurkle-color.md`,
  "",
].join("\n"));
console.log(`vendored chart.js ${version("chart.js")}`);
