"""The smallest stand-ins for ``qt``, ``ctk``, Slicer's Qt widgets and ``slicer.app`` that let Slicer's own
Python base classes (ScriptedLoadableModule, parameterNodeWrapper, slicer.util) run the module on a
``slicer-core`` MRML scene, without a Qt.

What they do, and no more: widgets are objects of classes named and related as in Qt / CTK / Slicer (the
parameter-node GUI connectors pick a connector by ``type(widget)``), with the properties and signals the
module and the connectors use; ``QUiLoader`` builds them from a .ui file's XML by class and objectName, with
the properties and signal-slot connections it declares; ``qMRMLNodeComboBox`` follows the scene as Slicer's
does (selects a node when none may be empty, drops a node removed from the scene); ``QTimer``s fire only when
the test's loop calls ``slicer.app.processEvents()``, which times each callback (the longest is the longest
the main thread was held).

Only the harness (Testing/slicer_harness.py) imports this, in a process of its own.
"""

from __future__ import annotations

import inspect
import sys
import time
import types
import xml.etree.ElementTree as ET

# --------------------------------------------------------------------------------------------------
# Signals


def _arity(slot) -> int | None:
    """How many positional arguments ``slot`` takes (None: any), as PythonQt calls a slot with as many
    of the signal's arguments as it accepts."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            count += 1
    return count


class BoundSignal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args):
        for slot in list(self._slots):
            n = _arity(slot)
            slot(*(args if n is None else args[:n]))


class Signal:
    """A class attribute that gives each object its own :class:`BoundSignal`."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        signals = obj.__dict__.setdefault("_signals", {})
        return signals.setdefault(self.name, BoundSignal())


def _notifying(name, signals=(), convert=None):
    """A property stored as ``_<name>`` whose change emits the named signals with the new value."""

    def get(self):
        return self.__dict__.get("_" + name, self._defaults().get(name))

    def set(self, value):
        if convert is not None:
            value = convert(self, value)
        old = get(self)
        self.__dict__["_" + name] = value
        if value != old:
            for signal in signals:
                getattr(self, signal).emit(value)

    return property(get, set)


# --------------------------------------------------------------------------------------------------
# QObject, QWidget and the widgets the module uses


class QObject:
    DEFAULTS: dict = {}

    def __init__(self, parent=None):
        self._parent = None
        self._children = []
        self._properties = {}
        self.objectName = ""
        if parent is not None:
            self.setParent(parent)

    @classmethod
    def _defaults(cls):
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "DEFAULTS", {}))
        return merged

    def __getattr__(self, name):  # plain properties (checkable, minimum, ...) start at their class's default
        defaults = type(self)._defaults()
        if name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def name(self):  # PythonQt shows objectName as "name" too
        return self.objectName

    def className(self):
        return type(self).__name__

    def parent(self):
        return self._parent

    def setParent(self, parent):
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def children(self):
        return list(self._children)

    def findChildren(self, cls=None):
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def isWidgetType(self):
        return False

    def deleteLater(self):
        pass


class QWidget(QObject):
    DEFAULTS = {"enabled": True, "visible": True, "toolTip": ""}
    enabled = _notifying("enabled")
    visible = _notifying("visible")
    toolTip = _notifying("toolTip")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._layout = None

    def isWidgetType(self):
        return True

    def setEnabled(self, value):
        self.enabled = bool(value)

    def setVisible(self, value):
        self.visible = bool(value)

    def setToolTip(self, text):
        self.toolTip = text

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self


class _Layout(QObject):
    def __init__(self, parent=None):
        super().__init__()
        self._owner = None
        if parent is not None:
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        widget.setParent(self._owner)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                item.setParent(self._owner)

    def addLayout(self, layout, *args):
        layout._owner = self._owner


class QVBoxLayout(_Layout):
    pass


class QHBoxLayout(_Layout):
    pass


class QFormLayout(_Layout):
    pass


class QLabel(QWidget):
    DEFAULTS = {"text": "", "wordWrap": False, "textFormat": None}
    text = _notifying("text")

    def setText(self, text):
        self.text = text


class QAbstractButton(QWidget):
    DEFAULTS = {"text": "", "checkable": False, "checked": False}
    clicked = Signal()
    toggled = Signal()
    text = _notifying("text")
    checked = _notifying("checked", ("toggled",))

    def setText(self, text):
        self.text = text

    def setChecked(self, value):
        self.checked = bool(value)

    def click(self):
        """As Qt: nothing happens on a disabled button."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    DEFAULTS = {"checkable": True}
    stateChanged = Signal()

    @property
    def checked(self):
        return self.__dict__.get("_checked", False)

    @checked.setter
    def checked(self, value):
        old = self.checked
        self.__dict__["_checked"] = bool(value)
        if bool(value) != old:
            self.toggled.emit(bool(value))
            self.stateChanged.emit(2 if value else 0)


class QProgressBar(QWidget):
    DEFAULTS = {"value": 0, "minimum": 0, "maximum": 100}
    valueChanged = Signal()
    value = _notifying("value", ("valueChanged",))

    def setValue(self, value):
        self.value = value


class QComboBox(QWidget):
    currentIndexChanged = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    @property
    def currentIndex(self):
        return self._currentIndex

    @currentIndex.setter
    def currentIndex(self, index):
        index = index if -1 <= index < len(self._items) else -1
        if index != self._currentIndex:
            self._currentIndex = index
            self.currentIndexChanged.emit(index)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentText(self):
        return self._items[self._currentIndex] if self._currentIndex >= 0 else ""

    def addItem(self, text, *args):
        self._items.append(str(text))
        if self._currentIndex == -1:
            self.currentIndex = 0

    def clear(self):
        self._items = []
        self.currentIndex = -1

    def itemText(self, index):
        return self._items[index] if 0 <= index < len(self._items) else ""

    def setItemText(self, index, text):
        if 0 <= index < len(self._items):
            self._items[index] = str(text)

    def findText(self, text):
        return self._items.index(text) if text in self._items else -1


class QTableWidgetItem:
    def __init__(self, text=""):
        self._text = str(text)
        self._background = None

    def text(self):
        return self._text

    def setBackground(self, brush):
        self._background = brush

    def background(self):
        return self._background


class QTableWidget(QWidget):
    currentCellChanged = Signal()
    cellClicked = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows = 0
        self._columns = 0
        self._items = {}
        self._header = []
        self._current = (-1, -1)

    def setRowCount(self, n):
        self._rows = n
        self._items = {k: v for k, v in self._items.items() if k[0] < n}

    def rowCount(self):
        return self._rows

    def setColumnCount(self, n):
        self._columns = n

    def columnCount(self):
        return self._columns

    def setHorizontalHeaderLabels(self, labels):
        self._header = list(labels)

    def horizontalHeaderLabels(self):  # for the harness's checks
        return list(self._header)

    def setItem(self, row, column, item):
        self._items[(row, column)] = item

    def item(self, row, column):
        return self._items.get((row, column))

    def clearContents(self):
        self._items = {}

    def resizeColumnsToContents(self):
        pass

    def currentRow(self):
        return self._current[0]

    def setCurrentCell(self, row, column):
        previous = self._current
        self._current = (row, column)
        if previous != self._current:
            self.currentCellChanged.emit(row, column, previous[0], previous[1])


class QColor:
    def __init__(self, *args):
        self.rgb = tuple(args[:3]) if len(args) >= 3 else (0, 0, 0)
        self._text = args[0] if len(args) == 1 and isinstance(args[0], str) else None

    def name(self, *args):
        return self._text or "#" + "".join(f"{int(v):02x}" for v in self.rgb)


class QBrush:
    def __init__(self, color=None):
        self._color = color

    def color(self):
        return self._color


class QIcon:
    def __init__(self, path=""):
        self.path = path


class QSettings:
    """Application settings, kept in memory for the life of the process."""

    _values: dict = {}

    def value(self, key, default=None):
        return self._values.get(key, default)

    def setValue(self, key, value):
        self._values[key] = value

    def contains(self, key):
        return key in self._values


# --------------------------------------------------------------------------------------------------
# Timers and the event loop (driven by the harness)


class QTimer(QObject):
    """Fires only from ``slicer.app.processEvents()``."""

    timeout = Signal()
    active: list = []  # running timers and pending single shots, process-wide

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._due = None

    def setInterval(self, ms):
        self.interval = int(ms)

    def setSingleShot(self, value):
        self.singleShot_ = bool(value)

    def start(self, ms=None):
        if ms is not None:
            self.interval = int(ms)
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in QTimer.active:
            QTimer.active.append(self)

    def stop(self):
        self._due = None
        if self in QTimer.active:
            QTimer.active.remove(self)

    def isActive(self):
        return self in QTimer.active

    @staticmethod
    def singleShot(ms, callback):
        timer = QTimer()
        timer.singleShot_ = True
        timer.timeout.connect(callback)
        timer.start(ms)


# --------------------------------------------------------------------------------------------------
# Loading a .ui file


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        import os

        return os.path.isfile(self.path)

    def open(self, mode):
        return True


def _property_value(element):
    """A .ui ``<property>``'s value as Python."""
    child = element[0]
    tag, text = child.tag, (child.text or "")
    if tag == "bool":
        return text == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag in ("string", "enum", "set", "cstring"):
        return text
    return None  # rect, size, ...: nothing here uses them


class QUiLoader:
    """Builds the widgets of a .ui file (classes looked up in ``qt``, ``ctk`` and ``slicer``)."""

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot()
        top = self._widget(root.find("widget"), None)
        named = {w.objectName: w for w in [top] + top.findChildren(QObject)}
        for c in root.iter("connection"):
            sender, receiver = named[c.findtext("sender")], named[c.findtext("receiver")]
            signal, slot = c.findtext("signal").split("(")[0], c.findtext("slot").split("(")[0]
            getattr(sender, signal).connect(getattr(receiver, slot))
        return top

    def _widget(self, element, parent):
        cls_name = element.get("class")
        cls = next((getattr(m, cls_name) for m in (sys.modules["qt"], sys.modules["ctk"], sys.modules["slicer"])
                    if hasattr(m, cls_name)), None)
        if cls is None:
            raise RuntimeError(f"no stand-in for the widget class {cls_name}")
        widget = cls(parent)
        widget.objectName = element.get("name") or ""
        for prop in element.findall("property"):
            value = _property_value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), value)
            else:
                setattr(widget, prop.get("name"), value)
        self._children(element, widget)
        return widget

    def _children(self, element, owner):
        for child in element:
            if child.tag == "widget":
                self._widget(child, owner)
            elif child.tag in ("layout", "item"):
                self._children(child, owner)


class Qt:
    WaitCursor = 16
    ArrowCursor = 0
    ShiftModifier = 0x02000000


class QMessageBox(QWidget):
    NoButton, Ok, Cancel, Yes, No, Retry, Close = 0, 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    Information, Warning, Critical, Question = 1, 2, 3, 4


class QApplication:
    @staticmethod
    def setOverrideCursor(cursor):
        sys.modules["slicer"].app.setOverrideCursor(cursor)

    @staticmethod
    def restoreOverrideCursor():
        sys.modules["slicer"].app.restoreOverrideCursor()


# --------------------------------------------------------------------------------------------------
# CTK and Slicer widgets


class ctkCollapsibleButton(QAbstractButton):
    DEFAULTS = {"collapsed": False}


def _clamped(widget, value):
    return min(max(float(value), widget.minimum), widget.maximum)


class ctkSliderWidget(QWidget):
    DEFAULTS = {"value": 0.0, "minimum": 0.0, "maximum": 99.0, "singleStep": 1.0, "decimals": 2, "suffix": ""}
    valueChanged = Signal()
    value = _notifying("value", ("valueChanged",), convert=_clamped)

    def setValue(self, value):
        self.value = value


class ctkPathLineEdit(QWidget):
    DEFAULTS = {"currentPath": "", "nameFilters": [], "filters": 0}
    currentPathChanged = Signal()
    currentPath = _notifying("currentPath", ("currentPathChanged",), convert=lambda w, v: str(v))

    def setCurrentPath(self, path):
        self.currentPath = path


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    pass


class ctkCheckablePushButton(QPushButton):
    pass


class ctkDoubleSlider(ctkSliderWidget):
    pass


class ctkDoubleSpinBox(ctkSliderWidget):
    pass


class ctkRangeWidget(QWidget):
    pass


class ctkDoubleRangeSlider(QWidget):
    pass


class ctkDirectoryButton(QWidget):
    pass


class ctkColorPickerButton(QWidget):
    pass


class ctkMessageBox(QMessageBox):
    pass


class qMRMLWidget(QWidget):
    mrmlSceneChanged = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qSlicerWidget(qMRMLWidget):
    pass


class qSlicerScriptedLoadableModuleWidget(qSlicerWidget):
    """The panel a scripted module's widget is built into (``self.parent`` of the widget)."""

    DEFAULTS = {"isEntered": False}


class qMRMLNodeComboBox(QWidget):
    """Lists the scene's nodes of ``nodeTypes`` as Slicer's does: with ``noneEnabled`` off it selects the
    first such node; a node removed from the scene stops being the current one."""

    DEFAULTS = {"nodeTypes": [], "noneEnabled": False, "addEnabled": True, "removeEnabled": True,
                "showChildNodeTypes": True, "noneDisplay": "None"}
    currentNodeChanged = Signal()
    currentNodeIDChanged = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._current = None
        self._tags = []

    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            self._tags = [scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded),
                          scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)]
        self._selectDefault()

    def mrmlScene(self):
        return self._scene

    def _accepts(self, node):
        if node is None or node.GetHideFromEditors() or node.GetSingletonTag():
            return False
        if self.showChildNodeTypes:
            return any(node.IsA(t) for t in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def nodes(self):
        if self._scene is None:
            return []
        return [n for n in (self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes()))
                if self._accepts(n)]

    def _selectDefault(self):
        if self._current is not None and (self._scene is None or not self._scene.IsNodePresent(self._current)):
            self.setCurrentNode(None)
        if self._current is None and not self.noneEnabled:
            nodes = self.nodes()
            if nodes:
                self.setCurrentNode(nodes[0])

    def _onNodeAdded(self, caller, event):
        if self._current is None and not self.noneEnabled:
            self._selectDefault()

    def _onNodeRemoved(self, caller, event):
        if self._current is not None and not self._scene.IsNodePresent(self._current):
            self.setCurrentNode(None)
            self._selectDefault()

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node):
        if node is not None and not self._accepts(node):
            return
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID())


class qMRMLSliderWidget(ctkSliderWidget):
    pass


class qMRMLSpinBox(ctkSliderWidget):
    pass


class qMRMLRangeWidget(ctkRangeWidget):
    pass


# --------------------------------------------------------------------------------------------------
# The application


class StandInEnvironment:
    def __init__(self, environ):
        self._environ = dict(environ)

    def keys(self):
        return list(self._environ)

    def value(self, key):
        return self._environ.get(key, "")


class ModuleManager(QObject):
    moduleAboutToBeUnloaded = Signal()


class StandInApp(QObject):
    """``slicer.app``: what the base classes and the module ask of qSlicerApplication. It runs the timers
    (``processEvents``) and records how long each timer callback held the main thread. ``startupCompleted``
    is never emitted: the harness loads the module into an application that has started (and has no Sample
    Data module)."""

    applicationName = "Slicer"
    temporaryPath = None
    startupCompleted = Signal()

    def __init__(self, testing=True):
        super().__init__()
        self._testing = testing
        self.overrideCursors = []  # the stack of override cursors
        self.callbackTimes: list[tuple[float, str]] = []  # (seconds, what) for each timer callback
        self._moduleManager = ModuleManager()
        self._settings = QSettings()

    def testingEnabled(self):
        return self._testing

    def translate(self, context, text):
        return text

    def setOverrideCursor(self, cursor):
        self.overrideCursors.append(cursor)

    def restoreOverrideCursor(self):
        if self.overrideCursors:
            self.overrideCursors.pop()

    def moduleManager(self):
        return self._moduleManager

    def settings(self):
        return self._settings

    def userSettings(self):
        return self._settings

    def startupEnvironment(self):
        import os

        return StandInEnvironment(os.environ)

    def processEvents(self):
        """Fire each due timer once, timing its callbacks."""
        now = time.monotonic()
        for timer in [t for t in QTimer.active if t._due is not None and t._due <= now]:
            if timer.singleShot_:
                timer.stop()
            else:
                timer._due = now + timer.interval / 1000.0
            started = time.perf_counter()
            timer.timeout.emit()
            self.callbackTimes.append((time.perf_counter() - started, "timer"))


def install():
    """Register ``qt`` and ``ctk`` as modules and the Slicer widget classes on ``slicer``; returns ``slicer.app``'s
    stand-in (to be set by the caller once the scene exists)."""
    this = sys.modules[__name__]
    qt = types.ModuleType("qt")
    for name in ("QObject", "QWidget", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QLabel", "QPushButton",
                 "QCheckBox", "QProgressBar", "QComboBox", "QTableWidget", "QTableWidgetItem", "QColor", "QBrush",
                 "QIcon", "QSettings", "QTimer", "QFile", "QUiLoader", "Qt", "QMessageBox", "QApplication"):
        setattr(qt, name, getattr(this, name))
    # classes the connectors name but nothing here builds: distinct types, so "type(widget) in (...)" works
    for name in ("QSlider", "QSpinBox", "QDoubleSpinBox", "QLineEdit", "QTextEdit"):
        setattr(qt, name, type(name, (QWidget,), {}))
    ctk = types.ModuleType("ctk")
    for name in ("ctkCollapsibleButton", "ctkSliderWidget", "ctkPathLineEdit", "ctkCheckBox", "ctkComboBox",
                 "ctkCheckablePushButton", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkRangeWidget",
                 "ctkDoubleRangeSlider", "ctkDirectoryButton", "ctkColorPickerButton", "ctkMessageBox"):
        setattr(ctk, name, getattr(this, name))
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    import slicer

    for name in ("qMRMLWidget", "qSlicerWidget", "qSlicerScriptedLoadableModuleWidget", "qMRMLNodeComboBox",
                 "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget"):
        setattr(slicer, name, getattr(this, name))
    return StandInApp()
