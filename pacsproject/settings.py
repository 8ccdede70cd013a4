"""Settings for the receiver and its admin, read from the configuration file named by
DICOM_CONFIG (pacsproject.site_config) and from the environment (django-environ).

Defaults run a local receiver out of the box (SQLite index `./pacs.db`, files in `./received`);
production sets DICOM_CONFIG, SECRET_KEY and ALLOWED_HOSTS.
"""

import datetime as dt
from pathlib import Path

import environ

from pacsproject.secret_key import secret_key_from_file
from pacsproject.site_config import site_config_read

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# The one configuration file (runscp, every other command, gunicorn): database, storage, AE.
SITE_CONFIG = site_config_read(env, base_dir=BASE_DIR)
DICOM_CONFIG = SITE_CONFIG.path

DEBUG = env.bool("DEBUG", default=False)
# Without SECRET_KEY, a random key generated at the first start and kept (mode 0600) in
# SECRET_KEY_FILE, shared by every process of this installation (pacsproject/secret_key.py).
SECRET_KEY = env.str("SECRET_KEY", default="") or secret_key_from_file(
    Path(env.str("SECRET_KEY_FILE", default=str(BASE_DIR / ".secret-key")))
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# HTTPS=true behind TLS (directly or through a proxy setting X-Forwarded-Proto): cookies only
# over HTTPS, HTTP redirected, HSTS. Off by default so that a local `gunicorn` over plain HTTP
# can log in.
HTTPS = env.bool("HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
# The browsers' preload list commits a whole (hospital) domain to HTTPS for good: the site's
# owner opts in to it, and `check --deploy` is not asked to insist.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if env.bool("BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SESSION_COOKIE_HTTPONLY = True
# Logged out after this many minutes without a request (0: never); at most SESSION_MAX_HOURS
# after signing in, and when the browser closes.
SESSION_IDLE_MINUTES = env.int("SESSION_IDLE_MINUTES", default=30)
SESSION_COOKIE_AGE = int(env.float("SESSION_MAX_HOURS", default=12) * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
X_FRAME_OPTIONS = "DENY"
# Content Security Policy (django-csp) on every page: scripts, images and everything else from
# this site only, no plug-ins, no framing. Styles allow inline `style` attributes, which the
# admin and the SVG charts use; no page has inline scripts. A page needing more (a viewer's
# workers or WebAssembly) widens it for itself with csp.decorators.csp_update.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "archive",
    "receiver",
    "routing",
    "audit",
    "axes",
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "accounts",
    "dicomweb",
    "corsheaders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # CORS for /dicomweb/ only, and only for DICOMWEB_CORS_ORIGINS (none by default).
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "pacsproject.idle_logout.IdleLogoutMiddleware",
    "audit.middleware.RefusedAccessMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Turns a locked-out login into its 429 page (django-axes).
    "axes.middleware.AxesMiddleware",
    # Last, so that it sees each page before the others measure it.
    "archive.safetext.ControlCharacterMiddleware",
]

ROOT_URLCONF = "pacsproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "pacsproject.wsgi.application"

DATABASES = {"default": SITE_CONFIG.database}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not Django's in-memory default: the tests' SCP threads each open a connection, and
    # WAL and busy timeouts work only on a file.
    DATABASES["default"].setdefault("TEST", {"NAME": str(BASE_DIR / ".test-pacs.db")})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Login throttling (django-axes), for the admin's login and every other authenticate() with a
# request (HTTP Basic): LOGIN_FAILURE_LIMIT failures lock the user name, and separately the
# client's address, for LOGIN_COOLOFF_MINUTES (429). `manage.py axes_reset_username NAME`,
# `axes_reset_ip ADDRESS` or `axes_reset` unlock. Lockouts are logged and audited.
AUTHENTICATION_BACKENDS = [
    "pacsproject.auth_backends.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Two-factor authentication (django-otp, TOTP; accounts/two_factor.py): asked of staff who have
# an authenticator (`manage.py totpdevice NAME`), required of all of them when true.
REQUIRE_2FA = env.bool("REQUIRE_2FA", default=False)
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="DICOM receiver")
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=20)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.float("LOGIN_COOLOFF_MINUTES", default=30))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # successful logins are in the audit trail
AXES_CLIENT_IP_CALLABLE = "audit.services.client_address"  # the audit trail's address

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# whitenoise serves the admin's and our static files, with DEBUG off too; from the apps'
# folders when `collectstatic` has not been run, so a fresh clone works as it is.
WHITENOISE_USE_FINDERS = True
# No uploaded media. Named anyway: with Django's empty defaults, its test live server answered
# every path naming a file under the working directory (MEDIA_URL "/", MEDIA_ROOT ".") before
# any view saw it, the viewer's login included.
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / "media"

# Where received instances are written (storage.directory, DICOM_STORAGE_DIR): a directory, or
# a bucket as s3://BUCKET/PREFIX (archive.storage), which stays a URL; `runscp --storage-dir`
# overrides it.
DICOM_STORAGE_DIR: Path | str = SITE_CONFIG.storage_dir
# Local staging for a bucket: each receiver node's own (archive.storage.s3).
DICOM_STAGING_DIR = Path(env.str("DICOM_STAGING_DIR", default=str(BASE_DIR / "staging")))
# What to do when an instance arrives again with different bytes: keep, overwrite or reject.
DICOM_DUPLICATES = SITE_CONFIG.duplicates
DICOM_AE_TITLE = SITE_CONFIG.ae_title
# Seconds without a new instance before a series or study is announced stable (storage.stable_age,
# DICOM_STABLE_AGE; runscp's --stable-age overrides it; `announce_stable` reads it).
DICOM_STABLE_AGE = SITE_CONFIG.stable_age

# Seconds between two heartbeats of each receiver process (live status); three missed beats
# and the process is shown as down.
RECEIVER_HEARTBEAT = env.float("RECEIVER_HEARTBEAT", default=5.0)
# A token that lets Prometheus scrape /metrics (Authorization: Bearer <token>); without it,
# only a logged-in staff user sees the metrics.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Forwarding rules with `deidentify`: the secret their pseudonyms derive from (routing.deidentify);
# empty: derived from SECRET_KEY. Set the same value on every node of a site.
DEIDENTIFY_SEED = env.str("DEIDENTIFY_SEED", default="")
# Days the audit trail keeps its records (`manage.py auditprune`); 0 keeps them for ever.
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=0)
# An IHE ATNA audit record repository (udp://host:514 or tls://host:6514), fed by
# `manage.py auditexport` from the queue in the database; TLS verifies it with AUDIT_SYSLOG_CA
# and may present AUDIT_SYSLOG_CERTIFICATE / _PRIVATE_KEY. AUDIT_SOURCE_ID names this system.
AUDIT_SYSLOG = env.str("AUDIT_SYSLOG", default="")
AUDIT_SYSLOG_CA = env.str("AUDIT_SYSLOG_CA", default="")
AUDIT_SYSLOG_CERTIFICATE = env.str("AUDIT_SYSLOG_CERTIFICATE", default="")
AUDIT_SYSLOG_PRIVATE_KEY = env.str("AUDIT_SYSLOG_PRIVATE_KEY", default="")
AUDIT_SOURCE_ID = env.str("AUDIT_SOURCE_ID", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "archive.safetext.TerminalSafeFormatter",
            "format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "receiver": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        "archive": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        # Refused requests (a Host header not in ALLOWED_HOSTS, a bad CSRF token): Django's
        # own handler shows them only with DEBUG on, and a 400 must be explained in the log.
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "audit": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        "axes": {"handlers": ["console"], "level": "WARNING"},
        "routing": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        # pynetdicom logs each PDU and DIMSE message; we log one line per association.
        "pynetdicom": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# Web applications on other origins allowed to call /dicomweb/ (CORS, django-cors-headers),
# e.g. `DICOMWEB_CORS_ORIGINS=https://viewer.example.org`; none by default. OHIF served by
# us at /viewer/ is same-origin and needs none.
# WADO-RS metadata of each series made when the series is announced stable (the receiver's
# sweeper), so that OHIF's first visit does not wait for it; false leaves it to the first visit.
DICOMWEB_PREPARE_METADATA = env.bool("DICOMWEB_PREPARE_METADATA", default=True)

CORS_ALLOWED_ORIGINS = env.list("DICOMWEB_CORS_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/dicomweb/.*$"
CORS_EXPOSE_HEADERS = ["Warning", "Content-Type", "Content-Length"]

# The OHIF viewer's files (`make viewer`), served at /viewer/ behind the admin's login.
VIEWER_DIR = Path(env.str("VIEWER_DIR", default=str(BASE_DIR / "viewer")))
