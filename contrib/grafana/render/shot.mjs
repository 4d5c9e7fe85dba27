// node shot.mjs URL OUT.png: headless Chromium loads the renderer, waits until
// every panel is drawn (window.renderDone) and saves a full-page screenshot.
import { chromium } from "playwright-core";

const [url, out] = process.argv.slice(2);
if (!url || !out) { console.error("usage: node shot.mjs URL OUT.png"); process.exit(2); }
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(url);
  await page.waitForFunction(() => window.renderDone === true, null, { timeout: 60000 });
  const errors = await page.evaluate(() => window.renderErrors);
  for (const e of errors) console.error("panel error:", e);
  const empty = await page.evaluate(() => window.renderEmpty);
  if (empty.length) console.error(`panels with no data: ${empty.join(", ")}`);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}${errors.length ? ` (${errors.length} panel errors)` : ""}`);
  process.exitCode = errors.length ? 1 : 0;
} finally {
  await browser.close();
}
