"""The admin of topics, response topics and stored messages, with per-object permissions (django-guardian's
"Object permissions" page on each topic grants can_produce / can_consume / can_view_status)."""

from django.contrib import admin, messages
from django.db.models import Count
from django.utils import timezone
from guardian.admin import GuardedModelAdmin

from .models import BrokerMessage, BrokerTopic, ResponseTopic


class ResponseTopicExistsFilter(admin.SimpleListFilter):
    """Filter topics for response topics."""

    title = "is response topic"
    parameter_name = "responsetopic"

    def lookups(self, request, model_admin):
        return [("1", "Yes"), ("0", "No")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(responsetopic__isnull=False)
        if self.value() == "0":
            return queryset.filter(responsetopic__isnull=True)
        return queryset


class AvailabilityFilter(admin.SimpleListFilter):
    """Filter topics by their availability."""

    title = "Availability"
    parameter_name = "last_pong"

    def lookups(self, request, model_admin):
        return [("offline", "Offline"), ("online", "Online"), ("unknown", "Unknown")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "offline":
            return queryset.filter_offline()
        if value == "online":
            return queryset.filter_online()
        if value == "unknown":
            return queryset.filter_unknown_availability()
        return queryset


@admin.action(description="Ping topics")
def ping_topics(modeladmin, request, queryset):
    """Ping the selected topics' consumers."""
    topics = list(queryset.filter(supports_dasf=True))
    for topic in topics:
        topic.ping()
    modeladmin.message_user(request, f"Pinged {len(topics)} topic(s).", messages.SUCCESS)


@admin.action(description="Garbage collect topics")
def garbage_collect(modeladmin, request, queryset):
    """Delete the selected topics whose garbage-collection time has passed."""
    deleted, _ = queryset.filter(garbage_collect_on__lte=timezone.now()).delete()
    modeladmin.message_user(request, f"Deleted {deleted} object(s).", messages.SUCCESS)


@admin.register(BrokerTopic)
class BrokerTopicAdmin(GuardedModelAdmin):
    """An admin for broker topics."""

    search_fields = ["slug__icontains"]
    list_display = [
        "slug",
        "get_consumers",
        "get_producers",
        "is_public",
        "is_response_topic",
        "get_availability",
        "pending_messages",
        "stored_messages",
        "stored_responses",
    ]
    list_filter = ["is_public", "date_created", ResponseTopicExistsFilter, AvailabilityFilter]
    readonly_fields = ["api_info", "last_ping", "last_pong", "date_created"]
    actions = [ping_topics, garbage_collect]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("responsetopic").annotate(_stored=Count("brokermessage"))

    @admin.display(description="Consumer(s)")
    def get_consumers(self, obj):
        return ", ".join(map(str, obj.consumers))[:60]

    @admin.display(description="Producer(s)")
    def get_producers(self, obj):
        return ", ".join(map(str, obj.producers))[:60]

    @admin.display(boolean=True)
    def is_response_topic(self, obj):
        return obj.is_response_topic

    @admin.display(description="Online?", boolean=True)
    def get_availability(self, obj):
        return obj.availability

    @admin.display(description="Pending messages")
    def pending_messages(self, obj):
        """Messages nobody has acknowledged yet."""
        return str(obj.brokermessage_set.filter(delivered_to=None).count())

    @admin.display(description="Stored messages")
    def stored_messages(self, obj):
        """Messages kept for the topic."""
        return str(obj._stored if hasattr(obj, "_stored") else obj.brokermessage_set.count())

    @admin.display(description="Stored responses")
    def stored_responses(self, obj):
        """Messages kept on the topic's response topics."""
        if obj.is_response_topic:
            return "-"
        return str(BrokerMessage.objects.filter(topic__responsetopic__is_response_for=obj).count())


@admin.register(ResponseTopic)
class ResponseTopicAdmin(BrokerTopicAdmin):
    """An admin for response topics."""

    search_fields = [*BrokerTopicAdmin.search_fields, "is_response_for__slug__icontains"]
    list_display = BrokerTopicAdmin.list_display[:-1]
    list_filter = ["is_public", "date_created"]

    def get_queryset(self, request):
        return super(BrokerTopicAdmin, self).get_queryset(request).annotate(_stored=Count("brokermessage"))


@admin.action(description="Send messages")
def send_messages(modeladmin, request, queryset):
    """Send the selected messages to their topics' connected consumers again."""
    count = 0
    for message in queryset.select_related("topic"):
        message.send()
        count += 1
    modeladmin.message_user(request, f"Sent {count} message(s).", messages.SUCCESS)


@admin.action(description="Ping topics")
def ping_message_topics(modeladmin, request, queryset):
    """Ping the topics of the selected messages."""
    pks = queryset.values_list("topic__pk", flat=True)
    topics = list(BrokerTopic.objects.filter(pk__in=pks, supports_dasf=True))
    for topic in topics:
        topic.ping()
    modeladmin.message_user(request, f"Pinged {len(topics)} topic(s).", messages.SUCCESS)


class IsResponseMessageFilter(admin.SimpleListFilter):
    """Filter messages sent to response topics."""

    title = "is response message"
    parameter_name = "topic"

    def lookups(self, request, model_admin):
        return [("1", "Yes"), ("0", "No")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(topic__responsetopic__isnull=False)
        if self.value() == "0":
            return queryset.filter(topic__responsetopic__isnull=True)
        return queryset


class HasBeenDeliveredFilter(admin.SimpleListFilter):
    """Filter messages by whether any consumer acknowledged them."""

    title = "has been delivered"
    parameter_name = "delivered_to"

    def lookups(self, request, model_admin):
        return [("1", "Yes"), ("0", "No")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(delivered_to__isnull=False).distinct()
        if self.value() == "0":
            return queryset.filter(delivered_to=None)
        return queryset


@admin.register(BrokerMessage)
class BrokerMessageAdmin(GuardedModelAdmin):
    """An admin for stored messages."""

    search_fields = [
        "topic__slug__icontains",
        "topic__responsetopic__is_response_for__slug__icontains",
        "user__username__icontains",
        "user__email__icontains",
        "user__first_name__icontains",
        "user__last_name__icontains",
    ]
    list_display = ["message_id", "topic", "topic_availability", "is_response", "user", "delivered", "date_created"]
    list_filter = ["date_created", IsResponseMessageFilter, HasBeenDeliveredFilter]
    readonly_fields = ["content"]
    list_select_related = ["topic", "user"]
    actions = [send_messages, ping_message_topics]

    @admin.display(boolean=True)
    def delivered(self, obj):
        return obj.delivered_to.exists()

    @admin.display(boolean=True)
    def is_response(self, obj):
        return obj.is_response

    @admin.display(boolean=True, description="Topic online?")
    def topic_availability(self, obj):
        return obj.topic.availability
