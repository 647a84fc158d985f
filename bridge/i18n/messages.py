"""Every sentence the bot or a ghost says, by key, in English: the source of the catalogs
(bridge/locales/, kept in step by `./dev catalogs`), each entry's key its msgctxt and its
English its msgid. Code refers to keys, never to literals; a message is rendered in the
recipient's language only when it is sent (see bridge/i18n/)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.i18n import catalogs
from bridge.i18n.catalogs import SOURCE_LANGUAGE

log = logging.getLogger("bridge.i18n.messages")

ENGLISH: dict[str, str] = {
    "greeting": (
        "Hi! I pair you with a random stranger for an anonymous chat, possibly on another "
        "Matrix server. Your partner never sees your Matrix ID, name, avatar or server, and "
        "you never see theirs.\n\n"
        "The rules:\n"
        "1. You must be 18 or older.\n"
        "2. Be respectful. No harassment, hate, threats or spam.\n"
        "3. Nothing illegal, and no sexual content involving minors, ever.\n"
        "4. Don't share personal details you would regret sharing.\n\n"
        "Send {prefix}agree to confirm you are 18 or older and accept these rules. "
        "Send {prefix}help to see every command.\n\n"
        "I speak {languages}: send {prefix}lang fr to talk in French, for example."
    ),
    "help": (
        "Commands:\n"
        "{prefix}agree: confirm you are 18 or older and accept the rules\n"
        "{prefix}start: find a random stranger to chat with\n"
        "{prefix}start cinema, jazz: the same, preferring someone who likes cinema or jazz "
        "(your interests are kept for next time)\n"
        "{prefix}interests cinema, jazz: set your interests; {prefix}interests alone shows "
        "them, {prefix}interests clear forgets them\n"
        "{prefix}lang fr: talk to me in French, and prefer strangers who speak it (a "
        "two-letter code); {prefix}lang alone shows it, {prefix}lang clear forgets it\n"
        "{prefix}status: whether you are waiting or chatting, and how many people are now\n"
        "{prefix}next: end the current chat and find someone new\n"
        "{prefix}stop: end the current chat and stop looking\n"
        "{prefix}report [reason]: report the stranger to the moderators (in the chat, or just "
        "after it); the chat ends, and the stranger is not told who reported them\n"
        "{prefix}block: end the chat and never be paired with this stranger again (in the "
        "chat, or just after it)\n"
        "{prefix}reveal: in a chat, offer to exchange Matrix IDs with the stranger; only when "
        "you both send it does each see the other's ID ({prefix}reveal cancel takes it back)\n"
        "{prefix}forget: erase everything I hold about you (I ask you to confirm first)\n"
        "{prefix}ask <question>: two strangers discuss your question while you watch "
        "(read-only; they never learn who asked)\n"
        "{prefix}discuss: wait for a stranger's question to discuss with another stranger\n"
        "{prefix}questions on|off: whether a stranger's question may come to you when you "
        "{prefix}start\n"
        "{prefix}report question [reason]: in a question's chat, report the question\n"
        "{prefix}help: this list\n\n"
        "In a chat room, leaving the room ends the chat and finds you someone new.\n\n"
        "I speak {languages}. Commands keep their names in every language."
    ),
    "forget_confirm": (
        "This erases everything I hold about you: that you accepted the rules, your "
        "interests and language, your place in the queue, your recent partners and the "
        "strangers you blocked, and the IDs of your messages. A chat you are in ends, and so "
        "does a question you asked. Reports made by you or about you and the moderators' "
        "decisions are kept: they are the operator's legal record. Blocks others made "
        "against you are kept too: they protect them. To go ahead, send {prefix}forget "
        "confirm within {minutes} minutes."
    ),
    "forgotten": (
        "Done: I have forgotten you. Your past chats no longer carry your Matrix ID; a chat "
        "that ended less than {grace} ago keeps it that long, so it can still be reported. "
        "Kept, as the operator's legal record: reports made by you or about you, the "
        "moderators' decisions (suspensions and bans) and the evidence a report holds; kept "
        "too, blocks others made against you. I'm leaving this room now; invite me again "
        "whenever you like."
    ),
    "forget_not_asked": (
        "Nothing to confirm: send {prefix}forget first, then {prefix}forget confirm within "
        "{minutes} minutes."
    ),
    "forget_usage": (
        "{prefix}forget erases everything I hold about you. Send {prefix}forget, and I'll ask "
        "you to confirm with {prefix}forget confirm."
    ),
    "forget_cooldown": (
        "I can't forget you while a pause on new chats is running (forgetting would lift "
        "it). Try again in {wait}."
    ),
    "agreed": "Thanks! Send {prefix}start when you are ready to meet a stranger.",
    "already_agreed": "You have already accepted the rules. Send {prefix}start to meet a stranger.",
    "must_agree": (
        "Before you can chat, please confirm you are 18 or older and accept the rules: "
        "send {prefix}agree. Send {prefix}help to see the rules again."
    ),
    "queued": "Looking for a stranger… I'll invite you to a chat as soon as someone is found.",
    "requeued": "Looking for a new stranger…",
    "already_waiting": "You are already in the queue. I'll invite you as soon as someone is found.",
    "already_chatting": (
        "You are already chatting with a stranger. Send {prefix}next for someone new, "
        "or {prefix}stop to end the chat."
    ),
    "stopped_waiting": "You left the queue. Send {prefix}start to look again.",
    "stopped_chat": "You ended the chat. Send {prefix}start to meet someone new.",
    "nothing_to_stop": "You are not chatting or waiting. Send {prefix}start to meet a stranger.",
    "unknown_command": "I don't know the command {command}. Send {prefix}help to see what I understand.",
    "not_a_command": "I'm a bot: I only understand commands. Send {prefix}help to see them.",
    "chat_opened": "You're now chatting with a random stranger. Say hi!",
    "chat_opened_shared": "You're now chatting with a random stranger. You both like: {tags}.",
    "chat_opened_no_shared_interests": (
        "No one shares your interests right now, so you're chatting with a random stranger."
    ),
    "chat_opened_other_language": (
        "No one who speaks your language is waiting right now, so you're chatting with a "
        "random stranger."
    ),
    "chat_opened_other_language_shared": (
        "No one who speaks your language is waiting right now, so you're chatting with a "
        "random stranger. You both like: {tags}."
    ),
    "chat_opened_no_shared_anything": (
        "No one shares your interests or your language right now, so you're chatting with a "
        "random stranger."
    ),
    "queued_with_preferences": (
        "Looking for a stranger who {wanted}… I'll invite you to a chat as soon as someone is "
        "found. If no one like that turns up within {fallback} seconds, you'll be paired with "
        "anyone waiting."
    ),
    "interests_set": "Your interests: {tags}. {when}",
    "interests_cleared": "Your interests are cleared. {when}",
    "interests_show": (
        "Your interests: {tags}. Change them with {prefix}interests cinema, jazz, or forget "
        "them with {prefix}interests clear."
    ),
    "interests_none": (
        "You have no interests set. Set some with {prefix}interests cinema, jazz to meet "
        "strangers who share them."
    ),
    "lang_set": "Your language: {lang}. I'll talk to you in it from now on. {when}",
    "lang_set_unsupported": (
        "Your language: {lang}. {when} I don't speak it yet, so I'll keep talking to you in "
        "{default}."
    ),
    "lang_cleared": "Your language preference is cleared. {when}",
    "lang_show": "Your language: {lang}. Forget it with {prefix}lang clear.",
    "lang_none": (
        "You have no language preference. Set one with a two-letter code, e.g. {prefix}lang fr."
    ),
    "lang_invalid": (
        "{lang} is not a language code I know. Please use a two-letter ISO 639-1 code, such as "
        "en, fr, es or de."
    ),
    "preferences_apply_now": "I'm looking for someone who matches from now on.",
    "wanted_tags": "likes {tags}",
    "wanted_lang": "speaks {lang}",
    "wanted_both": "likes {tags} and speaks {lang}",
    "status_tags": " Your interests: {tags}.",
    "status_lang": " Your language: {lang}.",
    "status_preferences": "{tags}{lang}",
    "preferences_apply_next": "They apply from your next {prefix}start.",
    "tags_too_many": "You can set at most {max_tags} interests. Please choose fewer.",
    "tag_too_long": (
        "Each interest can be at most {max_length} characters long; \"{tag}\" is longer. "
        "Separate interests with commas."
    ),
    "status_waiting": (
        "You have been waiting for a stranger for {duration}.{preferences}\n"
        "Right now: {waiting} waiting, {chatting} chatting."
    ),
    "status_chatting": (
        "You have been in a chat for {duration}.{preferences}\n"
        "Right now: {waiting} waiting, {chatting} chatting."
    ),
    "status_idle": (
        "You are not chatting or waiting. Send {prefix}start to meet a stranger.{preferences}\n"
        "Right now: {waiting} waiting, {chatting} chatting."
    ),
    "partner_left": (
        "Stranger has disconnected. Send {prefix}start to the bot to meet someone new."
    ),
    "you_left": "You have disconnected.",
    "invite_expired_reason": "The invite expired",
    "partner_no_show": "The stranger didn't join the chat in time. Looking for someone new…",
    "invite_expired": (
        "You didn't accept the chat invite in time, so the stranger was matched with someone "
        "else. Send {prefix}start when you're ready."
    ),
    "chat_ended_dm": "Your chat ended. Send {prefix}start to meet someone new.",
    "chat_not_active": (
        "This chat has ended; nothing you write here reaches anyone. "
        "Send {prefix}start to the bot to meet someone new."
    ),
    "refused_unsupported_msgtype": "That kind of message can't be sent to the stranger; it was not delivered.",
    "refused_media_disabled": (
        "This bridge doesn't pass that kind of attachment on, so it was not delivered."
    ),
    "refused_media_too_big": "That attachment is too large to deliver, so it was not delivered.",
    "refused_media_unreadable": (
        "That attachment could not be read (or is not a picture the bridge can clean), so "
        "it was not delivered."
    ),
    "refused_media_unavailable": (
        "That attachment could not be fetched from your homeserver, so it was not delivered. "
        "Please try again."
    ),
    "refused_unsupported_event": "That can't be sent to the stranger; it was not delivered.",
    "refused_too_long": "That message is too long to deliver. Please split it up.",
    "refused_group_call": (
        "Group calls (Element Call, the calls Element X makes) can't reach the stranger: "
        "they were not called. A voice or video call from Element Web or Desktop does reach "
        "them."
    ),
    "refused_calls_disabled": "Calls are turned off here: the stranger was not called.",
    "refused_malformed": "That message could not be read, so it was not delivered.",
    "refused_unknown_target": "That refers to a message the stranger never got; it was not delivered.",
    "refused_location": "Locations are never sent to the stranger; that one was not delivered.",
    "refused_poll": "Polls can't be sent to the stranger; that one was not delivered.",
    "refused_custom_reaction": "Custom emoji reactions can't be sent to the stranger; use a standard emoji.",
    "encryption_disabled": (
        "This bridge's operator has turned encryption off, so I can't read this encrypted "
        "chat. Please open a new DM with me with encryption turned off. I'm leaving this room."
    ),
    "encryption_required": (
        "This bridge only talks in encrypted rooms. Please open a new DM with me with "
        "encryption turned on. I'm leaving this room."
    ),
    "dm_undecryptable": (
        "I couldn't decrypt your last message (its keys never reached me), so I didn't act on "
        "it. Please send it again."
    ),
    "refused_undecryptable": (
        "Your last message could not be delivered: it arrived encrypted and the key to read it "
        "never reached the bridge. Your client may not trust this chat's device yet; please "
        "send it again."
    ),
    "refused_encrypted": (
        "Encrypted messages can't be relayed yet, so this one was not delivered. "
        "Please use a room without encryption."
    ),
    # -- safety: reports, blocks, restrictions (what users are told) --
    "report_received": (
        "Thanks, your report was received and the moderators will look at it. The chat has "
        "ended; the stranger is not told who reported them. Send {prefix}start to meet "
        "someone new."
    ),
    "report_already": "You have already reported this stranger; the moderators have it.",
    "report_nothing": (
        "There is no chat to report: {prefix}report works during a chat or just after it."
    ),
    "blocked_requeued": (
        "Blocked: you will never be paired with that stranger again. Looking for a new "
        "stranger…"
    ),
    "blocked": "Blocked: you will never be paired with that stranger again.",
    "block_nothing": (
        "There is no chat to block: {prefix}block works during a chat or just after it."
    ),
    "restricted": (
        "You can't chat here: {what}{until}.\nReason: {reason}\n{source}\nIf you think this "
        "is wrong, you can ask the operator of this bridge to review it."
    ),
    "restriction_suspended": "your account is suspended",
    "restriction_banned": "your account is banned",
    "restriction_server_banned": "your homeserver is banned from this bridge",
    "restriction_server_not_allowed": "your homeserver is not allowed on this bridge",
    "restriction_by_moderator": "This was decided by a moderator.",
    "restriction_by_automatic": (
        "This was decided automatically, after several users reported you; a moderator will "
        "review it."
    ),
    "restriction_by_policy_list": "This follows a ban list this bridge subscribes to.",
    "restriction_by_config": "This is a setting of this bridge.",
    "until_forever": " permanently",
    "until_time": " until {time}",
    "no_reason_given": "(no reason given)",
    "auto_suspension_reason": "several users reported you within a short time",
    # -- the moderation room (moderators see real Matrix IDs: they are the operator's staff) --
    "mod_report": (
        "Report #{id}: {reporter} reported {reported}.\nReason: {reason}\n"
        "The reported user's last {count} messages in that chat:\n{evidence}\n"
        "Act with {prefix}ban {reported} [duration] <reason>, {prefix}suspend {reported} "
        "<duration> <reason>, or {prefix}dismiss {id}."
    ),
    "mod_auto_suspended": (
        "{user} is suspended automatically{until}, pending review: reported by {reporters} "
        "users recently (weight {weight}). Lift it with {prefix}unban {user}."
    ),
    "mod_help": (
        "Moderator commands (here only, from admins only):\n"
        "{prefix}reports: the open reports\n"
        "{prefix}dismiss <id> [reason]: close a report without action\n"
        "{prefix}ban <user> [duration|forever] <reason>: ban a user (for ever unless a "
        "duration like 30m, 12h, 7d, 2w is given)\n"
        "{prefix}suspend <user> <duration> <reason>: suspend a user for a while\n"
        "{prefix}unban <user> [reason]: lift a user's ban or suspension\n"
        "{prefix}banserver <server> <reason>: ban every user of a homeserver\n"
        "{prefix}unbanserver <server> [reason]: lift it\n"
        "{prefix}counts: waiting, chatting, open reports, bans\n"
        "Every action is recorded with who, when and why."
    ),
    "mod_unknown_command": "Unknown moderator command {command}. Send {prefix}help.",
    "mod_reports": "Open reports ({count}):\n{lines}",
    "mod_report_line": "#{id} {age} ago: {reporter} reported {reported}: {reason}",
    "mod_no_reports": "No open reports.",
    "mod_dismissed": "Report #{id} dismissed.",
    "mod_no_such_report": "There is no open report #{id}.",
    "mod_banned": "{user} is banned{until}. Reason: {reason}",
    "mod_suspended": "{user} is suspended{until}. Reason: {reason}",
    "mod_unbanned": "{user}'s restrictions are lifted.",
    "mod_not_restricted": "{user} has no ban or suspension to lift.",
    "mod_server_banned": (
        "{server} is banned: {reason} ({affected} of its users were chatting or waiting)."
    ),
    "mod_server_unbanned": "{server} is no longer banned.",
    "mod_server_not_banned": "{server} was not banned.",
    "mod_counts": (
        "Waiting: {waiting}. Chatting: {chatting} people in {conversations} chats. Open "
        "reports: {reports}. Users banned or suspended: {restricted}. Servers banned: {servers}."
    ),
    "mod_usage": "Usage: {usage}",
    "mod_reason_needed": "Please give a reason: it is recorded, and the user is told it.",
    "mod_bad_duration": "{duration} is not a duration: use e.g. 30m, 12h, 7d, 2w or forever.",
    "mod_bad_user": "{user} is not a Matrix user ID (@name:server).",
    "mod_bad_server": "{server} is not a server name.",
    "mod_not_admin_target": "{user} is an admin of this bridge and cannot be restricted here.",
    "restricted_chat_ended": (
        "Your chat was ended: {what}{until}.\nReason: {reason}\n{source}\nIf you think this "
        "is wrong, you can ask the operator of this bridge to review it."
    ),
    # -- rate limits --------------------------------------------------------------------------
    "too_fast": (
        "You're looking for new strangers too fast. You can start again in {wait}."
    ),
    "flood_cooldown": (
        "Your last chat was ended because you sent too many messages too fast. You can start "
        "again in {wait}."
    ),
    "flood_warning": (
        "Slow down: you're sending messages too fast, so that one was not delivered. If you "
        "keep on, the chat will end."
    ),
    "flood_ended": (
        "Your chat was ended because you kept sending messages too fast. You can start again "
        "in {wait}."
    ),
    "link_held": (
        "Links can't be sent at the start of a chat, so that message was not delivered. Links "
        "are allowed after {after}."
    ),
    "link_after_messages": "{count} more messages",
    "link_after_time": "{duration}",
    "link_after_both": "{messages} and {time}",
    # Mutual reveal (bridge/reveal): said in the chat rooms by the ghosts, except the last two.
    "reveal_asked": "Stranger would like to exchange contacts. Send {prefix}reveal to agree.",
    "reveal_withdrawn": "Stranger took back their request to exchange contacts.",
    "reveal_requested": (
        "Your request to exchange contacts was sent. If the stranger agrees, you will each see "
        "the other's Matrix ID here. Send {prefix}reveal cancel to take it back."
    ),
    "reveal_already_requested": (
        "You have already asked to exchange contacts; the stranger has not agreed yet. Send "
        "{prefix}reveal cancel to take it back."
    ),
    "reveal_done": (
        "You both agreed to exchange contacts. The stranger is {contact}. Open the link to "
        "start a direct chat with them."
    ),
    "reveal_already_done": "You have already exchanged contacts with this stranger.",
    "reveal_cancelled": "You took back your request to exchange contacts.",
    "reveal_nothing_to_cancel": "You have no request to exchange contacts to take back.",
    "reveal_too_late": "You have already exchanged contacts; that can't be taken back.",
    "reveal_not_yet": "The stranger hasn't joined the chat yet. Try again once they have.",
    "reveal_usage": (
        "Send {prefix}reveal to offer to exchange contacts with the stranger, or "
        "{prefix}reveal cancel to take your offer back."
    ),
    # (In the DM with the bot.)
    "reveal_chat_ended": (
        "That chat has ended, so contacts can no longer be exchanged there. Nothing was "
        "revealed."
    ),
    "reveal_in_chat_only": (
        "{prefix}reveal works only inside a chat room, to exchange contacts with the stranger "
        "you are chatting with."
    ),
    "reveal_done_dm": (
        "You and the stranger of your last chat both agreed to exchange contacts, just as it "
        "ended. The stranger is {contact}."
    ),
    # -- pieces of other messages: durations and lists ------------------------------------------
    "duration_seconds": "{seconds} s",
    "duration_minutes": "{minutes} min",
    "duration_minutes_seconds": "{minutes} min {seconds} s",
    "duration_hours": "{hours} h",
    "duration_hours_minutes": "{hours} h {minutes} min",
    "duration_days": "{days} days",
    "list_separator": ", ",
    "list_separator_or": " or ",
    # -- question mode (!ask, !discuss, !questions) --
    "question_asked": "A stranger asks: {question}",
    "ask_usage": (
        "Ask two strangers a question: {prefix}ask <your question>. You watch their "
        "discussion without taking part, and they never learn who asked."
    ),
    "question_too_long": "Your question is too long: {max} characters at most, please.",
    "question_no_links": "Questions can't contain links. Please ask without one.",
    "already_asking": (
        "You have a question open already. Send {prefix}stop to withdraw it (or to stop "
        "watching) before asking another."
    ),
    "question_queued": (
        "Your question is waiting for two strangers to discuss it. I'll invite you to watch "
        "as soon as they are found. Send {prefix}stop to withdraw it."
    ),
    "question_withdrawn": "Your question is withdrawn.",
    "watch_stopped": "You stopped watching. The two strangers may go on without you.",
    "discuss_usage": "Just send {prefix}discuss (it takes nothing after it) to wait for a question.",
    "discuss_queued": (
        "Waiting for a question to discuss… When a stranger asks one, I'll invite you to a "
        "chat about it with another stranger. The one who asked watches, and you never "
        "learn who it is."
    ),
    "already_discussing": "You are already waiting for a question to discuss.",
    "status_discussing": (
        "You have been waiting for a question to discuss for {duration}.{preferences}\n"
        "Right now: {waiting} waiting, {chatting} chatting."
    ),
    "status_asking": (
        "Your question has been waiting for two strangers for {duration}.\n"
        "Right now: {waiting} waiting, {chatting} chatting."
    ),
    "stopped_discussing": "You stopped waiting for questions. Send {prefix}discuss to wait again.",
    "questions_on": (
        "A stranger's question may now come to you while you wait after {prefix}start: "
        "you discuss it with another stranger while the one who asked watches (you never "
        "learn who it is). Send {prefix}questions off to stop that."
    ),
    "questions_off": "From now on {prefix}start only finds you plain chats.",
    "questions_show_on": (
        "Questions may come to you while you wait after {prefix}start. Send "
        "{prefix}questions off to stop that."
    ),
    "questions_show_off": (
        "Questions don't come to you after {prefix}start. Send {prefix}questions on to "
        "accept them, or {prefix}discuss to wait for one."
    ),
    "questions_usage": (
        "Send {prefix}questions on or {prefix}questions off ({prefix}questions alone shows "
        "the setting)."
    ),
    "watch_opened": (
        "Two strangers are discussing your question: {question}\nThey appear here as "
        "{name_1} and {name_2}. They can't see this room and never learn who asked."
    ),
    "watch_read_only": (
        "This room is read-only: nothing you write here reaches the strangers."
    ),
    "watch_partner_left": "{name} has disconnected.",
    "watch_ended": "The discussion has ended.",
    "watch_no_show": (
        "A stranger didn't join in time, so the discussion could not start. Send "
        "{prefix}ask to ask again."
    ),
    "report_question_received": (
        "Thanks, your report of the question was received and the moderators will look at "
        "it. The chat has ended; nobody is told who reported. Send {prefix}start to meet "
        "someone new."
    ),
    "report_no_question": (
        "There is no question to report: {prefix}report question works in a question's "
        "chat or just after it."
    ),
    "mod_question_report": (
        "Report #{id}: {reporter} reported the question {asker} asked (question mode).\n"
        "Reason: {reason}\nThe question: {question}\n"
        "Act with {prefix}ban {asker} [duration] <reason>, {prefix}suspend {asker} "
        "<duration> <reason>, or {prefix}dismiss {id}."
    ),
}



# Notes for translators (written into the catalogs as "#." comments): pieces glued into other
# messages, where a translation must fit the message around it.
NOTES: dict[str, str] = {
    "greeting": "{languages} is the list of languages the bot speaks, each by its own name.",
    "help": "{languages} is the list of languages the bot speaks, each by its own name.",
    "lang_set_unsupported": "{default} is the default language by its own name, e.g. "
                            "English (en).",
    "wanted_tags": "Completes queued_with_preferences: 'Looking for a stranger who ...'.",
    "wanted_lang": "Completes queued_with_preferences: 'Looking for a stranger who ...'.",
    "wanted_both": "Completes queued_with_preferences: 'Looking for a stranger who ...'.",
    "status_tags": "Glued after the first sentence of status_*: keep the leading space.",
    "status_lang": "Glued after the first sentence of status_*: keep the leading space.",
    "status_preferences": "status_tags then status_lang; reorder if your language must.",
    "restriction_suspended": "The {what} of restricted: 'You can't chat here: {what}{until}.'",
    "restriction_banned": "The {what} of restricted: 'You can't chat here: {what}{until}.'",
    "restriction_server_banned": "The {what} of restricted: 'You can't chat here: "
                                 "{what}{until}.'",
    "restriction_server_not_allowed": "The {what} of restricted: 'You can't chat here: "
                                      "{what}{until}.'",
    "until_forever": "The {until} glued after {what} in restricted and mod_banned: keep the "
                     "leading space.",
    "until_time": "The {until} glued after {what} in restricted and mod_banned: keep the "
                  "leading space.",
    "link_after_messages": "The {after} of link_held: 'Links are allowed after {after}.'",
    "link_after_time": "The {after} of link_held: 'Links are allowed after {after}.'",
    "link_after_both": "The {after} of link_held: 'Links are allowed after {after}.'",
    "duration_days": "Always 2 days or more.",
    "list_separator": "Between interests: 'cinema, jazz'.",
    "list_separator_or": "Between interests: 'cinema or jazz'.",
    "invite_expired_reason": "Shown as the reason a chat invite was taken back.",
    "forgotten": "{grace} is a duration, e.g. '5 min' (the report grace period).",
}

# -- values of a message that are themselves words, rendered in the recipient's language ---------

@dataclass(frozen=True)
class Phrase:
    """Another message, as a value of this one (e.g. "until_forever" inside "restricted")."""
    key: str
    values: Mapping[str, "Value"] = field(default_factory=dict)


@dataclass(frozen=True)
class Duration:
    """3725 -> '1 h 2 min'; 65 -> '1 min 5 s'; 4 -> '4 s' (in the recipient's words)."""
    seconds: float


@dataclass(frozen=True)
class Listing:
    """Interests joined as the recipient's language joins them ('cinema, jazz')."""
    items: tuple[str, ...]
    separator: str = "list_separator"  # or "list_separator_or": 'cinema or jazz'


@dataclass(frozen=True)
class Lines:
    """Values, one a line (e.g. the open reports listed to the moderators)."""
    items: tuple["Value", ...]


Value = str | Phrase | Duration | Listing | Lines


def phrase(key: str, **values: Value) -> Phrase:
    return Phrase(key, values)


def duration(seconds: float) -> Duration:
    return Duration(seconds)


def _duration(seconds: float) -> Phrase:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return phrase("duration_seconds", seconds=str(seconds))
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return (phrase("duration_minutes_seconds", minutes=str(minutes), seconds=str(seconds))
                if seconds else phrase("duration_minutes", minutes=str(minutes)))
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return (phrase("duration_hours_minutes", hours=str(hours), minutes=str(minutes))
                if minutes else phrase("duration_hours", hours=str(hours)))
    return phrase("duration_days", days=str(hours // 24))


def render(value: Value, language: str = SOURCE_LANGUAGE,
           outer: Mapping[str, str] | None = None) -> str:
    """A value in `language`. A phrase inside a message also sees that message's own text
    values (`outer`), such as the command prefix."""
    outer = outer or {}
    if isinstance(value, Phrase):
        return text(value.key, language, **{**outer, **value.values})
    if isinstance(value, Duration):
        return render(_duration(value.seconds), language)
    if isinstance(value, Listing):
        return text(value.separator, language).join(value.items)
    if isinstance(value, Lines):
        return "\n".join(render(item, language, outer) for item in value.items)
    return value


def text(key: str, language: str = SOURCE_LANGUAGE, /, **values: Value) -> str:
    """The message in `language` (English where its catalog has no current translation)."""
    plain = {name: value for name, value in values.items() if isinstance(value, str)}
    rendered = {name: render(value, language, plain) for name, value in values.items()}
    translated = catalogs.translations(language).get(key)
    if translated is not None and translated[0] == ENGLISH[key]:
        try:
            return translated[1].format(**rendered)
        except (KeyError, IndexError, ValueError) as e:  # a broken catalog entry (tested)
            log.error("Catalog %s: message %s does not format (%r); sent in English",
                      language, key, e)
    return ENGLISH[key].format(**rendered)


def chat_opened(shared_tags: tuple[str, ...], interests_unmet: bool,
                language_unmet: bool) -> tuple[str, dict[str, Value]]:
    """The opening notice for one side: (key, values)."""
    values: dict[str, Value] = {"tags": Listing(tuple(shared_tags))}
    if interests_unmet and language_unmet:
        return "chat_opened_no_shared_anything", values
    if interests_unmet:
        return "chat_opened_no_shared_interests", values
    if language_unmet:
        return ("chat_opened_other_language_shared" if shared_tags
                else "chat_opened_other_language"), values
    return ("chat_opened_shared" if shared_tags else "chat_opened"), values

