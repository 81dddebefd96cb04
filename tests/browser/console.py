#!/usr/bin/env python3
"""Drives the approver console in headless Chromium with a virtual passkey per approver.

tests/tests/console_browser.rs starts a cluster and runs this script. Each approver registers a
passkey on /console/register; the script prints the fingerprints and waits while the admin
approves them. Then each approver logs in, finds the request in the pending list, opens it,
checks the amount, and approves it with a second passkey assertion (user verification on).
The last approval makes the cluster sign, which the script waits to see on the request page.

Chromium runs with a fresh profile and a fresh HOME whose NSS database trusts the console's
P-256 web CA: Chromium refuses WebAuthn on a page with a certificate error, so the test runs
with real certificate checks (never --ignore-certificate-errors).

Talking to the harness: one JSON object per line on stdout, each with an "event":
  {"event": "registered", "operator": "alice", "fingerprint": "SHA256:..."}
  {"event": "waiting", "for": "passkeys"}        then one line on stdin before going on
  {"event": "opened", "operator": ..., "statement_sha256": ..., "amount": ...}
  {"event": "approved", "operator": ..., "message": ...}
  {"event": "logged_in", "operator": ...}       the last approver, before approving; then
  {"event": "waiting", "for": "login_checked"}   and one stdin line (the harness checks that
                                                 logging in approved nothing)
  {"event": "signed", "request_id": ...}
  {"event": "done"}, or {"event": "failed", "error": ...}
Diagnostics go to stderr. On failure the script saves failure.png and failure.html in the
screenshot directory and exits 1.

Selenium must not download anything: the driver is Debian's /usr/bin/chromedriver and
SE_OFFLINE=true keeps Selenium Manager offline.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ["SE_OFFLINE"] = "true"

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as error:
    raise SystemExit(f"{error}: python3 -m pip install selenium==4.51.0 (scripts/test installs it)")

CHROMEDRIVER = "/usr/bin/chromedriver"
# Debian's /usr/bin/chromium is a shell wrapper; the browser itself lives here.
CHROMIUM_CANDIDATES = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
# Generous: the test machine is shared and a signature needs a Raft round and a FROST session.
PAGE_WAIT_S = 60
SIGNED_WAIT_S = 120
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/=]+")


def log(text):
    print(text, file=sys.stderr, flush=True)


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_stdin(what):
    """Blocks until the harness writes a line on stdin (it checks the cluster meanwhile)."""
    emit("waiting", **{"for": what})
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(f"the harness closed stdin while the script waited for {what}")
    log(f"harness: {line.strip()}")


def trusting_home(web_ca):
    """A fresh HOME whose NSS database (read by Chromium on Linux) trusts the web CA."""
    home = tempfile.mkdtemp(prefix="synod-browser-home-")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    certutil = shutil.which("certutil")
    if certutil is None:
        raise SystemExit("certutil is missing: apt-get install libnss3-tools (scripts/test installs it)")
    subprocess.run([certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "synod-web-ca", "-i", web_ca],
        check=True,
    )
    return home


def start_browser(home):
    binary = next((path for path in CHROMIUM_CANDIDATES if os.path.exists(path)), None)
    if binary is None:
        raise SystemExit("chromium is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [
        "--headless=new",
        # Root in a container has no user namespace for Chromium's sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={os.path.join(home, 'profile')}",
    ]:
        options.add_argument(flag)
    env = dict(os.environ, HOME=home, SE_OFFLINE="true")
    service = Service(CHROMEDRIVER, env=env, log_output=os.path.join(home, "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


class Approvers:
    """One virtual authenticator per approver, swapped in when that approver uses the browser.

    Only one authenticator is attached at a time, so a ceremony never has two to choose from;
    an approver's credentials (private key and signature counter) are carried from the removed
    authenticator to the next one, as if the same phone came back.
    """

    def __init__(self, driver):
        self.driver = driver
        self.credentials = {}
        self.current = None

    def use(self, operator):
        if self.current == operator:
            return
        self.put_away()
        options = VirtualAuthenticatorOptions()
        options.protocol = VirtualAuthenticatorOptions.Protocol.CTAP2
        options.transport = VirtualAuthenticatorOptions.Transport.INTERNAL
        options.has_resident_key = True
        options.has_user_verification = True
        options.is_user_verified = True
        options.is_user_consenting = True
        self.driver.add_virtual_authenticator(options)
        for credential in self.credentials.get(operator, []):
            self.driver.add_credential(credential)
        self.current = operator

    def put_away(self):
        if self.current is None:
            return
        self.credentials[self.current] = self.driver.get_credentials()
        self.driver.remove_virtual_authenticator()
        self.current = None


class Console:
    def __init__(self, driver, url, shots):
        self.driver = driver
        self.url = url.rstrip("/")
        self.shots = shots

    def open(self, path):
        self.driver.get(self.url + path)

    def find(self, css, timeout=PAGE_WAIT_S):
        def found(driver):
            elements = driver.find_elements(By.CSS_SELECTOR, css)
            return elements[0] if elements and elements[0].is_displayed() else False

        try:
            return WebDriverWait(self.driver, timeout).until(found)
        except TimeoutException:
            raise AssertionError(f"{css} did not appear on {self.driver.current_url}: {self.message()}")

    def text_of(self, css, predicate, what, timeout=PAGE_WAIT_S):
        """Waits until the text of `css` satisfies `predicate`; returns it."""

        def ready(driver):
            elements = driver.find_elements(By.CSS_SELECTOR, css)
            text = elements[0].text.strip() if elements else ""
            return text if predicate(text) else False

        try:
            return WebDriverWait(self.driver, timeout).until(ready)
        except TimeoutException:
            raise AssertionError(f"waited for {what} in {css} on {self.driver.current_url}: {self.message()}")

    def message(self):
        elements = self.driver.find_elements(By.CSS_SELECTOR, "#message")
        return f"#message says {elements[0].text.strip()!r}" if elements else "no #message on the page"

    def type_into(self, css, text):
        element = self.find(css)
        element.clear()
        element.send_keys(text)

    def screenshot(self, name):
        path = os.path.join(self.shots, name)
        self.driver.save_screenshot(path)
        log(f"screenshot {path}")

    def register(self, operator, label):
        self.open("/console/register")
        self.type_into("#operator", operator)
        self.type_into("#label", label)
        self.find("#register").click()
        text = self.text_of("#fingerprint", FINGERPRINT.search, "the new passkey's fingerprint")
        return FINGERPRINT.search(text).group(0)

    def login(self, operator):
        self.open("/console/login")
        self.type_into("#operator", operator)
        self.find("#login").click()
        self.find("#pending")

    def logout(self):
        buttons = self.driver.find_elements(By.CSS_SELECTOR, "#logout")
        if buttons:
            buttons[0].click()
            self.find("#login")
        # Whatever the page did, the next approver starts without this one's session.
        self.driver.delete_all_cookies()

    def open_request(self, request_id):
        """From the pending list, opens the request's page."""
        self.open("/console/requests")
        row = self.find(f'#pending tr[data-request-id="{request_id}"]')
        row.find_element(By.CSS_SELECTOR, "a.open").click()
        shown = self.text_of("#request-id", lambda text: request_id in text, "the request id")
        assert request_id in shown, shown

    def request_facts(self):
        digest = self.text_of(
            "#statement-sha256", lambda text: re.search(r"\b[0-9a-f]{64}\b", text), "the statement's SHA-256"
        )
        amount = self.text_of("#amount", bool, "the amount")
        status = self.text_of("#status", bool, "the request's status")
        return {
            "statement_sha256": re.search(r"\b[0-9a-f]{64}\b", digest).group(0),
            "amount": amount,
            "status": status,
        }

    def approve(self):
        self.find("#approve").click()
        # The page first asks for the passkey ("Touch your passkey…"), then says what the node answered.
        text = self.text_of("#message", lambda text: text and not text.endswith(("…", "...")), "the node's answer")
        classes = self.find("#message").get_attribute("class") or ""
        if "error" in classes.split() or re.search(r"refused|failed|error", text, re.IGNORECASE):
            raise AssertionError(f"the approval was refused: {text}")
        return text


def digits(text):
    return re.sub(r"\D", "", text)


def run(args, driver, console):
    approvers = Approvers(driver)
    names = args.approvers.split(",")

    # Each approver makes a passkey in "their" browser; it waits for the admin quorum.
    for name in names:
        approvers.use(name)
        fingerprint = console.register(name, f"{name}'s test passkey")
        emit("registered", operator=name, fingerprint=fingerprint)
    approvers.put_away()
    wait_stdin("passkeys")

    for index, name in enumerate(names):
        last = index == len(names) - 1
        approvers.use(name)
        console.login(name)
        if last:
            # Logged in, not yet approved: the harness checks the request still needs this approver.
            emit("logged_in", operator=name)
            wait_stdin("login_checked")
        console.open("/console/requests")
        console.find(f'#pending tr[data-request-id="{args.request_id}"]')
        if index == 0:
            console.screenshot("pending.png")
        console.open_request(args.request_id)
        facts = console.request_facts()
        if args.amount and args.amount not in digits(facts["amount"]):
            raise AssertionError(f"the page shows the amount {facts['amount']!r}, expected {args.amount}")
        if facts["status"] == "signed":
            raise AssertionError(f"the request is already signed before {name} approved")
        emit("opened", operator=name, **facts)
        if index == 0:
            console.screenshot("request.png")
        message = console.approve()
        emit("approved", operator=name, message=message)
        if last:
            wait_signed(console, args.request_id)
            console.screenshot("approved.png")
            emit("signed", request_id=args.request_id)
        console.logout()
    approvers.put_away()


def wait_signed(console, request_id):
    """Reloads the request page until it says signed (signing runs after the last approval)."""
    deadline = time.monotonic() + SIGNED_WAIT_S
    while True:
        console.open(f"/console/requests/{request_id}")
        status = console.text_of("#status", bool, "the request's status")
        if status == "signed":
            return
        if status in ("failed", "expired", "denied"):
            raise AssertionError(f"request {request_id} ended {status}: {console.message()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} is still {status!r} after {SIGNED_WAIT_S} s")
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the console's base URL, e.g. https://localhost:8443")
    parser.add_argument("--web-ca", required=True, help="PEM of the CA that issued the console's certificate")
    parser.add_argument("--request-id", required=True, help="the pending request the approvers approve")
    parser.add_argument("--amount", default="", help="the digits of the amount the request page must show")
    parser.add_argument("--approvers", default="alice,bob", help="comma-separated; the last one completes it")
    parser.add_argument("--screenshots", required=True, help="directory for pending.png, request.png, approved.png")
    args = parser.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    # The harness stops a hanging run with SIGTERM: leave through `finally`, which quits the
    # browser and its driver, instead of leaving them behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))

    home = trusting_home(args.web_ca)
    driver = start_browser(home)
    console = Console(driver, args.url, args.screenshots)
    try:
        run(args, driver, console)
        emit("done")
    except Exception as error:  # any failure: report it with the page it happened on
        log(f"FAILED: {type(error).__name__}: {error}")
        try:
            console.screenshot("failure.png")
            with open(os.path.join(args.screenshots, "failure.html"), "w") as out:
                out.write(driver.page_source)
        except Exception as again:  # the browser may be gone
            log(f"could not save the failing page: {again}")
        emit("failed", error=f"{type(error).__name__}: {error}")
        sys.exit(1)
    finally:
        driver.quit()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
