// The conversation about the current picture (speech2image/conversation.py): every request
// carries the turns the last answer sent back, so the next recording or prompt refines the
// picture ("make it blue", "another one", "go back"); the turns show as a strip of pictures,
// each with what was changed. "New picture" forgets them. app.js calls the two hooks:
// withConversation(doc) before sending, rememberTurn(event) on each "done" event.
'use strict';

const CONVERSATION_TAG = 'conversation';
const EDIT_TAG = 'edit';
// The turns the service sent back last ([] before the first picture).
const talk = { turns: [] };

/** The document to send, with the conversation so far in its tags. */
function withConversation(doc) {
  return { ...doc, tags: { ...(doc.tags || {}), [CONVERSATION_TAG]: talk.turns } };
}

/** Keep the conversation a "done" event sends back, and show its turns as the strip. */
function rememberTurn(event) {
  const turns = event.tags && event.tags[CONVERSATION_TAG];
  if (!Array.isArray(turns)) return;
  talk.turns = turns;
  showStrip(event.tags[EDIT_TAG]);
}

/** The strip: one small picture per turn, captioned with what was said and what changed. */
function showStrip(edit) {
  // The old pictures' URLs are revoked once the new strip has replaced them and they are done
  // loading (releaseImageUrl in app.js).
  const oldImages = [...$('strip').querySelectorAll('img')];
  const items = talk.turns.map((turn, index) => {
    const item = document.createElement('li');
    const url = URL.createObjectURL(base64ToBlob(turn.image, turn.mime_type));
    const img = document.createElement('img');
    Object.assign(img, { src: url, alt: turn.prompt, title: turn.prompt });
    const caption = document.createElement('span');
    caption.className = 'turn-said';
    caption.textContent = `${index + 1}. “${turn.said}”`;
    const changed = document.createElement('span');
    changed.className = 'turn-changed';
    changed.textContent = turn.summary;
    item.append(img, caption, changed);
    return item;
  });
  $('strip').replaceChildren(...items);
  oldImages.forEach(releaseImageUrl);
  $('understood').textContent = edit ? edit.summary : '';
  $('turns').hidden = talk.turns.length === 0;
}

/** Forget the conversation: the next recording or prompt starts a new picture. */
function newPicture() {
  talk.turns = [];
  showStrip(null);
}

$('new-picture').addEventListener('click', newPicture);
