// The console in a real browser: log in, find an ingested event, open it, press Redeliver and
// see the new attempt appear; then check that a form sent without its CSRF token is refused.
// Run by billhook's integration tests (crates/cli/tests/it/console.rs) against a test server.
import { launch, logIn, settings } from "./lib.mjs";

const { url, token, executablePath } = settings();
const eventType = process.env.EVENT_TYPE ?? "payment.succeeded";

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
  console.log(`ok - ${message}`);
}

/** Reloads `page` until `count()` reaches `atLeast`, for up to `seconds`. */
async function waitFor(page, count, atLeast, seconds, what) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const n = await count();
    if (n >= atLeast) {
      return n;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what} (have ${n}, want ${atLeast})`);
    }
    await page.waitForTimeout(250);
    await page.reload();
  }
}

const browser = await launch(executablePath);
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await logIn(page, url, token);
  check(await page.getByRole("heading", { name: "Overview" }).isVisible(), "logged in to the overview");

  // Find the event through the events page's filter.
  await page.getByRole("link", { name: "Events", exact: true }).click();
  await page.getByLabel("Type").selectOption(eventType);
  await page.getByRole("button", { name: "Filter" }).click();
  const link = page.locator("table a[href^='/events/evt_']").first();
  check((await link.count()) === 1, `found an ingested ${eventType} event`);
  await link.click();
  await page.waitForURL(/\/events\/evt_/);
  check(await page.getByRole("heading", { name: eventType }).isVisible(), "opened the event");

  const attempts = () => page.locator("ol.timeline li").count();
  const before = await waitFor(page, attempts, 1, 15, "the first delivery attempt");
  check(before >= 1, `the first delivery shows ${before} attempt(s)`);

  await page.getByRole("button", { name: "Redeliver" }).click();
  await page.waitForURL(/done=redelivered/);
  check(await page.getByText("Redelivering to 1 endpoint(s)").isVisible(), "the redelivery is acknowledged");
  const after = await waitFor(page, attempts, before + 1, 15, "the new attempt");
  check(after === before + 1, `the new attempt appeared (${before} → ${after})`);
  check((await page.locator("ol.timeline li .badge.good").count()) === after, "every attempt succeeded");

  // A form without its CSRF token is refused, and nothing is redelivered.
  await page.evaluate(() => {
    const field = document.querySelector("form[action$='/redeliver'] input[name='csrf']");
    field.value = "";
  });
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/redeliver") && r.request().method() === "POST"),
    page.getByRole("button", { name: "Redeliver" }).click(),
  ]);
  check(response.status() === 403, "a form without its CSRF token gets 403");
  check(await page.getByText("csrf_rejected").isVisible(), "the refusal names csrf_rejected");
  await page.goto(page.url().replace(/\/redeliver.*$/, "").replace(/\?.*$/, ""));
  await page.waitForTimeout(500);
  check((await attempts()) === after, "the refused form redelivered nothing");

  // The session cookie is out of reach of scripts.
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "billhook_session");
  check(session && session.httpOnly && session.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
} finally {
  await browser.close();
}
