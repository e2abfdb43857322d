// Captures the console's main pages, on a laptop and on a phone screen, into OUT_DIR.
import { mkdir } from "node:fs/promises";
import { launch, logIn, settings } from "./lib.mjs";

const { url, token, executablePath } = settings();
const out = process.env.OUT_DIR ?? "docs/screenshots";
await mkdir(out, { recursive: true });

const browser = await launch(executablePath);
try {
  const laptop = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: "light" });
  const page = await laptop.newPage();
  await logIn(page, url, token);
  const shots = [
    ["overview", "/"],
    ["events", "/events"],
    ["endpoints", "/endpoints"],
    ["sources", "/sources"],
    ["invoices", "/invoices"],
    ["payments", "/payments"],
  ];
  for (const [name, path] of shots) {
    await page.goto(`${url}${path}`);
    await page.screenshot({ path: `${out}/${name}.png`, fullPage: true });
  }
  // An event with its deliveries, and an invoice with its payments.
  await page.goto(`${url}/events?type=invoice.settled`);
  await page.locator("table a[href^='/events/evt_']").first().click();
  await page.waitForURL(/\/events\/evt_/);
  await page.screenshot({ path: `${out}/event.png`, fullPage: true });
  await page.goto(`${url}/invoices?status=paid`);
  await page.locator("table a[href^='/invoices/iv_']").first().click();
  await page.waitForURL(/\/invoices\/iv_/);
  await page.screenshot({ path: `${out}/invoice.png`, fullPage: true });

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  await logIn(small, url, token);
  await small.screenshot({ path: `${out}/overview-phone.png`, fullPage: false });
} finally {
  await browser.close();
}
console.log(`screenshots written to ${out}`);
