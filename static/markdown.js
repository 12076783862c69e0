// The Markdown of task descriptions, made into DOM nodes from text: never parsed as HTML.
//
// Paragraphs, lists (`-`, `*`, `+` or `1.`), `code`, **bold**, *em* (or _em_), and links
// whose address is http or https; anything else shows as the text it is.

const ITEM = /^([-*+]|(\d{1,9})[.)])\s+(.*)$/;
// In order: an escaped character, `code`, **bold**, __bold__, *em*, _em_ (not inside a
// word, so snake_case stays as it is), [label](address).
const INLINE = new RegExp(
  [
    /\\([\\`*_[\]()])/,
    /`([^`]+)`/,
    /\*\*(\S(?:.*?\S)?)\*\*/,
    /__(\S(?:.*?\S)?)__/,
    /\*([^*\s](?:[^*]*[^*\s])?)\*/,
    /(?<![\p{L}\p{N}_])_([^_\s](?:[^_]*[^_\s])?)_(?![\p{L}\p{N}_])/,
    /\[([^\]]+)\]\(([^()\s]+)\)/,
  ].map((part) => part.source).join('|'),
  'gu',
);

/** `text` as a fragment of <p>, <ul> and <ol> elements. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  let paragraph = [];
  let list = null;
  const endParagraph = () => {
    if (paragraph.length) fragment.append(element('p', inline(paragraph.join(' '))));
    paragraph = [];
  };
  // An item is made once its last line is known: made again at each line under it, a long
  // one would cost the square of its length.
  const endItem = () => {
    if (list?.lines) list.node.append(element('li', inline(list.lines.join(' '))));
    if (list) list.lines = null;
  };
  const endList = () => {
    endItem();
    if (list) fragment.append(list.node);
    list = null;
  };

  for (const line of String(text ?? '').split(/\r\n?|\n/).map((raw) => raw.trim())) {
    const item = ITEM.exec(line);
    if (!line) {
      endParagraph();
      endList();
    } else if (item) {
      endParagraph();
      const ordered = item[2] !== undefined;
      if (!list || list.ordered !== ordered) {
        endList();
        list = { ordered, node: document.createElement(ordered ? 'ol' : 'ul'), lines: null };
        if (ordered && item[2] !== '1') list.node.start = Number(item[2]);
      } else {
        endItem();
      }
      list.lines = [item[3]];
    } else if (list) {
      list.lines.push(line); // a line under an item continues it
    } else {
      paragraph.push(line);
    }
  }
  endParagraph();
  endList();
  return fragment;
}

/** The nodes of one paragraph's text. */
function inline(text) {
  const nodes = [];
  let at = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > at) nodes.push(text.slice(at, match.index));
    nodes.push(inlineNode(match));
    at = match.index + match[0].length;
  }
  if (at < text.length) nodes.push(text.slice(at));
  return nodes;
}

function inlineNode(match) {
  const [, escaped, code, bold, boldUnderscore, em, emUnderscore, label, address] = match;
  if (escaped !== undefined) return escaped;
  if (code !== undefined) return element('code', [code]);
  if (bold !== undefined || boldUnderscore !== undefined) return element('strong', inline(bold ?? boldUnderscore));
  if (em !== undefined || emUnderscore !== undefined) return element('em', inline(em ?? emUnderscore));
  const href = webAddress(address);
  if (href === null) return element('span', inline(label));
  const link = element('a', inline(label));
  Object.assign(link, { href, target: '_blank', rel: 'noopener noreferrer' });
  return link;
}

/** `address` when it is an absolute http(s) URL, else null. */
function webAddress(address) {
  try {
    const url = new URL(address);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

function element(tag, children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}
