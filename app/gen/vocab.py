"""The generator's vocabulary: country codes, event kinds, pages and user agents. Part of
the data format: record i's bytes depend on these tuples' order."""

from __future__ import annotations

# Real ISO 3166-1 alpha-2 codes, roughly by traffic; --countries N uses the first N.
COUNTRIES: tuple[str, ...] = (
    "US", "DE", "GB", "FR", "JP", "IN", "BR", "CA", "AU", "IT",
    "ES", "MX", "KR", "NL", "SE", "CH", "PL", "BE", "AT", "NO",
    "DK", "FI", "IE", "PT", "CZ", "GR", "HU", "RO", "TR", "UA",
    "IL", "AE", "SA", "ZA", "NG", "EG", "KE", "AR", "CL", "CO",
    "PE", "NZ", "SG", "MY", "TH", "ID", "PH", "VN", "HK", "TW",
    "PK", "BD", "LK", "MA", "TN", "GH", "UY", "EC", "CR", "PA",
    "DO", "GT", "HR", "SI", "SK", "BG", "RS", "LT", "LV", "EE",
    "IS", "LU", "MT", "CY", "BO", "PY", "KZ", "GE", "JO", "QA",
)

KINDS: tuple[str, ...] = ("view", "click", "search", "add_to_cart", "purchase", "refund", "signup")
KIND_WEIGHTS: tuple[float, ...] = (0.40, 0.22, 0.04, 0.12, 0.15, 0.05, 0.02)
KIND_PAGE: tuple[str, ...] = (
    "/product/", "/product/", "/search?page=", "/cart?add=", "/checkout/order-", "/orders/refund-",
    "/signup?ref=",
)

USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "shop-app/7.4.1 (iOS 18.1; iPhone15,2)",
)
