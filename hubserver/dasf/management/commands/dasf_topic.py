"""``hubserver dasf_topic SLUG``: create or change a DASF topic and who may use it.

    hubserver dasf_topic my-backend --new -c backend-user -p alice     # a topic, its backend and one client
    hubserver dasf_topic my-backend --anonymous                         # anyone may use it
    hubserver dasf_topic my-backend --store-messages cacheall -i        # change its store rule, show it

A running hub picks changes made here up within a few seconds.
"""

import argparse

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ...constants import slug_problem
from ...grants import anonymous_user
from ...models import BrokerTopic

STORE_CHOICES = ["default", *BrokerTopic.StoreMessageChoices.values]


class Command(BaseCommand):
    help = "Create or update a DASF broker topic and its permissions."

    def add_arguments(self, parser):
        parser.add_argument("topic_slug", help="the topic's name")
        parser.add_argument("-n", "--new", action="store_true", help="create the topic (it must not exist yet)")
        parser.add_argument(
            "--public",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="let anyone produce to the topic (--no-public: only producers)",
        )
        parser.add_argument(
            "--dasf",
            action=argparse.BooleanOptionalAction,
            dest="supports_dasf",
            default=None,
            help="does the topic's consumer speak DASF (answer pings)? --no-dasf excludes it from pings",
        )
        parser.add_argument(
            "--anonymous",
            action="store_true",
            help="let anonymous clients use the topic: makes it public and lets the anonymous user consume",
        )
        parser.add_argument("-c", "--consumer", help="username to give (or, with -rm, take) can_consume")
        parser.add_argument("-p", "--producer", help="username to give (or, with -rm, take) can_produce")
        parser.add_argument(
            "-vs", "--view-status", help="username to give (or, with -rm, take) can_view_status on the topic"
        )
        parser.add_argument(
            "--store-messages",
            choices=STORE_CHOICES,
            help="what the topic stores; 'default' follows DASF_STORE_MESSAGES",
        )
        parser.add_argument("--create-consumer", action="store_true", help="create the -c user account")
        parser.add_argument("--create-producer", action="store_true", help="create the -p user account")
        parser.add_argument("--create-view-status", action="store_true", help="create the -vs user account")
        parser.add_argument(
            "-rm", "--remove-permissions", action="store_true", help="take the -c/-p/-vs permissions instead"
        )
        parser.add_argument(
            "-i", "--show-info", action="store_true", help="print the topic's settings and users (after the changes)"
        )
        parser.add_argument("-db", "--database", default="default", help="database alias (default: %(default)s)")

    def handle(self, *args, **options):
        from guardian.shortcuts import assign_perm, remove_perm

        slug = options["topic_slug"]
        database = options["database"]
        with transaction.atomic(using=database):
            topic = self._topic(slug, options["new"], database)
            if options["anonymous"]:
                topic.is_public = True
            if options["public"] is not None:
                topic.is_public = options["public"]
            if options["supports_dasf"] is not None:
                topic.supports_dasf = options["supports_dasf"]
            if options["store_messages"] is not None:
                topic.store_messages = None if options["store_messages"] == "default" else options["store_messages"]
            topic.save(using=database)
            if options["anonymous"]:
                assign_perm("can_consume", anonymous_user(), topic)
            created = set()
            for option, perm in (
                ("consumer", "can_consume"),
                ("producer", "can_produce"),
                ("view_status", "can_view_status"),
            ):
                username = options[option]
                if username is None:
                    continue
                user = self._user(username, options[f"create_{option}"] and username not in created, database)
                created.add(username)
                if options["remove_permissions"]:
                    remove_perm(perm, user, topic)
                else:
                    assign_perm(perm, user, topic)
        if options["show_info"]:
            self._show(topic)

    def _topic(self, slug, new, database):
        problem = slug_problem(slug)
        if problem:
            raise CommandError(problem)
        if new:
            if BrokerTopic.objects.using(database).filter(slug=slug).exists():
                raise CommandError(f"a topic named {slug!r} already exists (leave out --new to change it)")
            topic = BrokerTopic(slug=slug)
            try:
                topic.full_clean()
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from None
            return topic
        topic = BrokerTopic.objects.using(database).filter(slug=slug).first()
        if topic is None:
            raise CommandError(f"there is no topic named {slug!r} (create it with --new)")
        return topic

    def _user(self, username, create, database):
        user_model = get_user_model()
        users = user_model.objects.using(database)
        if create:
            if users.filter(**{user_model.USERNAME_FIELD: username}).exists():
                raise CommandError(f"a user named {username!r} already exists (leave out --create-...)")
            user = users.create(**{user_model.USERNAME_FIELD: username})
            user.set_unusable_password()
            user.save(using=database)
            return user
        user = users.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"there is no user named {username!r} (add --create-consumer/-producer/-view-status)")
        return user

    def _show(self, topic):
        write = self.stdout.write
        write(f"Topic {topic.slug}")
        write(f"  public:          {topic.is_public}")
        write(f"  DASF (pinged):   {topic.supports_dasf}")
        write(
            f"  stores messages: {topic.effective_store_messages.value}{'' if topic.store_messages else ' (default)'}"
        )
        for title, users in (
            ("Consumers", topic.consumers),
            ("Producers", topic.producers),
            ("Users that can view the status", topic.status_viewers),
        ):
            write(f"{title}:")
            for user in users:
                write(f"    {user}")
