"""Question mode (!ask): two strangers discuss a stranger's question while the asker
watches, read-only, through the same sanitising boundary as any relay.

table.py (the questions, discussers and question_mirrored tables), matcher.py (an asker and
two discussers, one short transaction), watch.py (the asker's watch room: open, notices,
close), mirror.py (a discusser's relayed event copied into the watch room), rules.py (what the
asker is told as a watch ends; pure), questions.py
(the commands, the ends of a question, restart and timer).
"""
