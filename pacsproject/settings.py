"""Settings for the receiver and its admin, read from the environment (django-environ).

Defaults run a local receiver out of the box (SQLite index `./pacs.db`, files in `./received`);
production sets SECRET_KEY, ALLOWED_HOSTS and, to scale out, DATABASE_URL.
"""

from pathlib import Path

import environ

from pacsproject.database import with_backend_options

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)
# Without SECRET_KEY a development key is used, which `check --deploy` reports (its prefix).
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    SECRET_KEY = "django-insecure-development-key-set-SECRET_KEY-in-production"
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
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "archive",
    "receiver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

DATABASES = {
    "default": with_backend_options(
        env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'pacs.db'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not Django's in-memory default: the tests' SCP threads each open a connection, and
    # WAL and busy timeouts work only on a file.
    DATABASES["default"].setdefault("TEST", {"NAME": str(BASE_DIR / ".test-pacs.db")})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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

# Where received instances are written; `runscp --storage-dir` overrides it.
_storage = env.str("DICOM_STORAGE_DIR", default=str(BASE_DIR / "received"))
# A directory, or a bucket as s3://BUCKET/PREFIX (archive.storage), which stays a URL.
DICOM_STORAGE_DIR: Path | str = _storage if _storage.startswith("s3://") else Path(_storage)
# Local staging for a bucket: each receiver node's own (archive.storage.s3).
DICOM_STAGING_DIR = Path(env.str("DICOM_STAGING_DIR", default=str(BASE_DIR / "staging")))
# What to do when an instance arrives again with different bytes: keep, overwrite or reject.
DICOM_DUPLICATES = env.str("DICOM_DUPLICATES", default="keep")

# Seconds between two heartbeats of each receiver process (live status); three missed beats
# and the process is shown as down.
RECEIVER_HEARTBEAT = env.float("RECEIVER_HEARTBEAT", default=5.0)
# A token that lets Prometheus scrape /metrics (Authorization: Bearer <token>); without it,
# only a logged-in staff user sees the metrics.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "receiver": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        "archive": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        # pynetdicom logs each PDU and DIMSE message; we log one line per association.
        "pynetdicom": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
