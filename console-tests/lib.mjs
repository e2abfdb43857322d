// Shared by the browser tests and the screenshot script: launch Debian's Chromium headless and
// log in to a running billhook.
import { chromium } from "playwright-core";

export function settings() {
  const url = process.env.BILLHOOK_URL;
  const token = process.env.BILLHOOK_TOKEN;
  if (!url || !token) {
    throw new Error("set BILLHOOK_URL and BILLHOOK_TOKEN to a running billhook and its admin token");
  }
  return { url: url.replace(/\/$/, ""), token, executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium" };
}

export async function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

export async function logIn(page, url, token) {
  await page.goto(`${url}/`);
  await page.waitForURL(/\/login/);
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${url}/`);
}
