// The console in a real browser: log in, find an ingested event, open it, press Redeliver and
// see the new attempt appear; then check that a form sent without its CSRF token is refused,
// that the session follows a link from another site but not a form, and that buttons are
// legible in both colour schemes.
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

/**
 * Reloads `page` until `count()` reaches `atLeast`, for up to `seconds`. The page may reload
 * itself meanwhile (it refreshes while an attempt is near): a count or reload caught in the
 * middle of that navigation is tried again.
 */
async function waitFor(page, count, atLeast, seconds, what) {
  const deadline = Date.now() + seconds * 1000;
  let n = 0;
  for (;;) {
    try {
      n = await count();
      if (n >= atLeast) {
        return n;
      }
    } catch (error) {
      if (!/navigat|context was destroyed/i.test(String(error))) {
        throw error;
      }
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what} (have ${n}, want ${atLeast})`);
    }
    await page.waitForTimeout(250);
    await page.reload().catch(() => {});
  }
}

/** The event's deliveries as the API has them. */
async function deliveriesOf(eventId) {
  const response = await fetch(`${url}/v1/events/${eventId}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!response.ok) {
    throw new Error(`GET /v1/events/${eventId}: ${response.status}`);
  }
  return (await response.json()).deliveries;
}

/** WCAG's contrast ratio of a button's text on its background, in the page's colour scheme. */
async function buttonContrast(page, name) {
  return page.getByRole("button", { name }).evaluate((button) => {
    const style = getComputedStyle(button);
    const luminance = (colour) => {
      const [r, g, b] = colour.match(/[\d.]+/g).slice(0, 3).map(Number).map((c) => {
        const s = c / 255;
        return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [light, dark] = [luminance(style.color), luminance(style.backgroundColor)].sort((a, b) => b - a);
    return (light + 0.05) / (dark + 0.05);
  });
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
  await page.waitForURL(/[?&]type=/);
  const rows = page.locator("table tbody tr");
  await rows.first().waitFor();
  const types = await rows.evaluateAll((all) => all.map((row) => row.querySelector("code")?.textContent));
  check(types.length >= 1 && types.every((t) => t === eventType), `the filter lists only ${eventType} events (${types.length})`);
  const link = rows.first().locator("a[href^='/events/evt_']");
  await link.click();
  await page.waitForURL(/\/events\/evt_/);
  const eventId = page.url().match(/evt_[0-9A-Z]+/)[0];
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
  // Read at once: an accepted redelivery sets its delivery pending in the same transaction.
  const deliveries = await deliveriesOf(eventId);
  check(
    deliveries.length === 1 && deliveries[0].status === "delivered" && deliveries[0].attempts.length === after,
    `the refused form redelivered nothing (${JSON.stringify(deliveries.map((d) => [d.status, d.attempts.length]))})`,
  );

  // The session cookie is out of reach of scripts, and goes along with a link from another
  // site (an alert in a chat, say) but not with a form another site sends.
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "billhook_session");
  check(session && session.httpOnly && session.sameSite === "Lax", "the session cookie is HttpOnly and SameSite=Lax");
  await page.route("http://elsewhere.test/", (route) =>
    route.fulfill({
      contentType: "text/html",
      body: `<a href="${url}/events">the events</a>
        <form method="post" action="${url}/quarantine/reprocess"><input name="csrf" value="guess"><button>Send</button></form>`,
    }),
  );
  await page.goto("http://elsewhere.test/");
  await page.getByRole("link", { name: "the events" }).click();
  await page.waitForURL((at) => at.origin !== "http://elsewhere.test");
  check(
    page.url() === `${url}/events` && (await page.getByRole("heading", { name: "Events" }).isVisible()),
    "a link from another site opens the page logged in",
  );
  await page.goto("http://elsewhere.test/");
  const [foreign] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/quarantine/reprocess")),
    page.getByRole("button", { name: "Send" }).click(),
  ]);
  check(foreign.status() === 401, `a form another site sends arrives without the session (${foreign.status()})`);

  // Buttons are legible in both colour schemes (WCAG AA: 4.5:1 for text).
  for (const colorScheme of ["light", "dark"]) {
    const schemed = await browser.newContext({ colorScheme });
    const login = await schemed.newPage();
    await login.goto(`${url}/login`);
    const ratio = await buttonContrast(login, "Log in");
    check(ratio >= 4.5, `the ${colorScheme} scheme's buttons have a contrast of ${ratio.toFixed(1)}:1`);
    await schemed.close();
  }
} finally {
  await browser.close();
}
