"""Headless Debian Chromium driven by Selenium, as the console's browser tests use it: one place for where
the browser and its driver live, the flags a container needs, and the console's log-in form."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MISSING = "Debian chromium and chromium-driver (scripts/install-system-deps.sh)"
# No sandbox (a container runs as root), no /dev/shm (small in containers), a fixed window (screenshots).
_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage")


def chromium_installed() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def headless_chromium(*, window: str = "1280,900", flags: Sequence[str] = ("--disable-gpu",),
                      browser_log: bool = False) -> Iterator[Any]:
    """A Chromium WebDriver, quit on exit. ``flags``: besides the container's; ``browser_log``: keep the
    page's console messages (driver.get_log("browser"))."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*_FLAGS, f"--window-size={window}", *flags):
        options.add_argument(flag)
    if browser_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: Any, console_url: str, user: str, password: str) -> None:
    """Through the console's log-in form, as a person does (a fresh session: earlier cookies dropped)."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{console_url.rstrip('/')}/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
