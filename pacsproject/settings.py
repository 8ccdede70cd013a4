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
# The development key only works with DEBUG on; a production run must bring its own.
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

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

# Where received instances are written; `runscp --storage-dir` overrides it.
DICOM_STORAGE_DIR = Path(env.str("DICOM_STORAGE_DIR", default=str(BASE_DIR / "received")))
# What to do when an instance arrives again with different bytes: keep, overwrite or reject.
DICOM_DUPLICATES = env.str("DICOM_DUPLICATES", default="keep")

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
