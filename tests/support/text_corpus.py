"""Strings for tokenizer tests: English, Chinese, code, numbers, emoji, mixed scripts, whitespace
runs, special-token lookalikes; a fixed list plus seeded random mixtures of the same pieces."""

from __future__ import annotations

import random

FIXED = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "Hello world!", "Hello, World!", "hello   world",
    "  leading and trailing  ", "multiple   internal    spaces", "tabs\tand\nnewlines\r\nmixed",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'D SAY IT'S OK",
    "The quick brown fox jumps over the lazy dog.", "Café naïve résumé façade Ångström", "é combining",
    "你好，世界！这是一个测试。", "中华人民共和国成立于1949年10月1日。", "我们今天去北京大学参观，天气很好。",
    "欧拉操作系统（openEuler）运行在鲲鹏服务器上。", "日本語のテキストとカタカナ ー", "한국어 텍스트입니다",
    "Россия и Україна", "مرحبا بالعالم", "Ελληνικά γράμματα", "हिन्दी पाठ", "ไทย ภาษา",
    "Emoji: 😀👍🏽🇺🇸 and ❤️", "🎉🎉🎉", "👨‍👩‍👧‍👦 family", "Numbers 12345 and 3.14159 and 1,000,000",
    "0", "007", "2024-11-24T19:56:55Z", "x = 1e-10 + 2.5E+3", "  1", "a  1", "a 1 b 22 c 333 d 4444",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces}", "email@example.com https://example.org/a?b=c&d=e",
    "def foo(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "SELECT * FROM users WHERE id = 42;", "<div class=\"x\">text</div>", "    indented\n        more\n",
    "<|begin_of_text|>", "<|im_start|>user\nhi<|im_end|>", "<|eot_id|> fake end", "<reserved_106>问题",
    "<|start_header_id|>system<|end_header_id|>", "<s> </s> <unk>", "<|endoftext|>",
    "zero\u200bwidth and\u00a0nbsp", "\u3000全角空格\u3000", "mixed中文English混合text", "¿Qué tal? ¡Bien!",
    "'s 're 've 'm 'll 'd", "don't DON'T Don'T", "a\r\nb\rc\nd", "trailing newline\n", "\n\nleading newlines",
    "    ", "\t\t", "a\u2581b", "▁▁spaces▁", "naïve cafe\u0301", "ﬁ ligature", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̴",
]

PIECES = [
    "the", " cat", " sat", "中国", "人工智能", "模型", " 123", "4567", "3.5", "😀", "🚀", " ", "  ", "\n", "\t",
    "{", "}", "()", "=>", "::", "Hello", "WORLD", "'s", "'ll", "é", "ü", "ß", "ñ", "—", "…", "«»", "<|", "|>",
    "<|im_end|>", "<|eot_id|>", "_", "__init__", "#", "//", "0x1F", "\r\n", "  \n", "数据库", "服务器", "，", "。",
]


def corpus(n_random: int = 260, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    mixed = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n_random)]
    return FIXED + mixed


CHINESE = [
    "自然语言处理是人工智能的一个重要方向。", "我爱北京天安门，天安门上太阳升。", "请用中文回答：今天天气怎么样？",
    "鲲鹏处理器支持NEON指令集和点积扩展。", "大语言模型在CPU上推理需要高效的矩阵乘法。", "😀表情符号和中文混合🎉",
]
