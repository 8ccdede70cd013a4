from django.contrib import admin

from receiver.models import AllowedAE, SOPClassRule


@admin.register(AllowedAE)
class AllowedAEAdmin(admin.ModelAdmin):
    list_display = ["ae_title", "host", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["enabled"]
    search_fields = ["ae_title", "host", "description"]


@admin.register(SOPClassRule)
class SOPClassRuleAdmin(admin.ModelAdmin):
    list_display = ["sop_classes", "action", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["action", "enabled"]
