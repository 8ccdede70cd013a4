"""Every page carries the Content Security Policy (tests/web/test_browser.py checks in Chromium
that the admin, the status page and previews work under it)."""

from django.urls import reverse


def test_pages_send_the_content_security_policy(admin_client):
    for url in [reverse("admin:login"), reverse("admin:index"), reverse("receiver-status")]:
        policy = admin_client.get(url)["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["script-src"] == "'self'", url
        assert directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'"


def test_no_page_allows_cross_origin_reads(admin_client):
    for url in [reverse("admin:index"), reverse("receiver-status-json"), "/metrics"]:
        response = admin_client.get(url, HTTP_ORIGIN="https://evil.example")
        assert "Access-Control-Allow-Origin" not in response, url
        assert response["X-Content-Type-Options"] == "nosniff"
    assert admin_client.get(reverse("admin:index"))["X-Frame-Options"] == "DENY"
